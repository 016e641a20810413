package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the file below data_dir (and below a NATS store_dir outside
// it) that `regwarm run` holds locked, with its pid inside.
const LockFile = "regwarm.lock"

// ErrLocked reports a data_dir or NATS store owned by another process.
var ErrLocked = errors.New("in use by another regwarm process")

// dirLock is an flock held on <dir>/regwarm.lock for the process's life.
type dirLock struct{ f *os.File }

// lockDir takes the lock of dir (created 0700 when missing) and writes
// this process's pid into it. Another owner yields ErrLocked, naming its
// pid.
func lockDir(dir, what string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, dir, err)
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(b))
			if _, perr := strconv.Atoi(pid); perr != nil {
				pid = "unknown"
			}
			return nil, fmt.Errorf("%s %s is %w (pid %s, lock %s)", what, dir, ErrLocked, pid, path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{f: f}, nil
}

// unlock releases the lock (the file stays, with a stale pid).
func (l *dirLock) unlock() {
	if l != nil && l.f != nil {
		_ = l.f.Close()
	}
}
