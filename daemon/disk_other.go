//go:build !linux

package daemon

import "errors"

// freeBytes is not implemented here: the disk watermark is off.
func freeBytes(string) (int64, error) { return 0, errors.New("free space unknown on this platform") }
