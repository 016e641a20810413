//go:build !linux

package fill

func mapBuf(int) ([]byte, bool) { return nil, false }

func unmapBuf([]byte) {}
