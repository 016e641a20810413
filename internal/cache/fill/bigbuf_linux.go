package fill

import "syscall"

// mapBuf maps an anonymous buffer of n bytes; ok is false if mapping
// failed. It asks for no transparent huge pages: with the kernel's usual
// defrag setting (madvise) a MADV_HUGEPAGE fault may compact memory on the
// spot, which stalled the first read of a cold blob by 5–6 ms in a
// quarter of the fills measured here; 4 KiB faults cost no wall time that
// the pull benchmark could see.
func mapBuf(n int) ([]byte, bool) {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, false
	}
	return b, true
}

// unmapBuf releases a buffer mapBuf made.
func unmapBuf(b []byte) { _ = syscall.Munmap(b[:cap(b)]) }
