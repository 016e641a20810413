package cache

import "syscall"

const hugePage = 2 << 20

// mapBuf maps an anonymous buffer of n bytes (rounded up to whole huge
// pages) and asks for transparent huge pages; ok is false if mapping failed.
func mapBuf(n int) ([]byte, bool) {
	size := (n + hugePage - 1) / hugePage * hugePage
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, false
	}
	_ = syscall.Madvise(b, 14) // MADV_HUGEPAGE; a hint, ignored where unsupported
	return b[:n], true
}

// unmapBuf releases a buffer mapBuf made.
func unmapBuf(b []byte) { _ = syscall.Munmap(b[:cap(b)]) }
