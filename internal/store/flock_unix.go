//go:build unix

package store

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive lock on f without waiting; ok is false when
// another open file (any process, this one included) holds it. The lock
// goes with the file's close, or the process's death.
func lockFile(f *os.File) (ok bool, err error) {
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == syscall.EWOULDBLOCK {
		return false, nil
	}
	return err == nil, err
}
