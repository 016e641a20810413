package store

import (
	"os"
	"syscall"
)

// startWriteback asks the kernel to start writing bytes [off, off+n) of f
// to disk without waiting (sync_file_range(2) with SYNC_FILE_RANGE_WRITE),
// so that the fsync at the end of a large write has little left to do. It
// is a hint: errors are ignored (the fsync reports real ones).
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SyncFileRange(int(fd), off, n, 2) // SYNC_FILE_RANGE_WRITE
	})
}
