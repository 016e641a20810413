package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/internal/config"
)

// TestLockRun: a second owner of a data_dir, or of an embedded NATS store
// outside it, is refused with the first owner's pid; an unlocked
// directory can be taken again.
func TestLockRun(t *testing.T) {
	t.Parallel()
	store := t.TempDir()
	cfg, err := config.Parse([]byte(fmt.Sprintf("version: 1\ndata_dir: %s\nnats: {embedded: {store_dir: %s}}\n", t.TempDir(), store)))
	if err != nil {
		t.Fatal(err)
	}
	locks, err := lockRun(cfg)
	if err != nil || len(locks) != 2 {
		t.Fatalf("first lockRun: %d locks, %v", len(locks), err)
	}
	pid := fmt.Sprintf("pid %d", os.Getpid())
	if _, err := lockRun(cfg); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), pid) || !strings.Contains(err.Error(), "data_dir") {
		t.Errorf("second lockRun: %v; want ErrLocked naming data_dir and %s", err, pid)
	}
	other := *cfg
	other.DataDir = t.TempDir()
	if _, err := lockRun(&other); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "nats.embedded.store_dir") {
		t.Errorf("lockRun on another data_dir with the same NATS store: %v; want ErrLocked naming the store", err)
	}
	if b, _ := os.ReadFile(filepath.Join(store, LockFile)); strings.TrimSpace(string(b)) != fmt.Sprint(os.Getpid()) {
		t.Errorf("lock file holds %q", b)
	}
	for _, l := range locks {
		l.unlock()
	}
	locks, err = lockRun(cfg)
	if err != nil {
		t.Fatalf("lockRun after unlock: %v", err)
	}
	for _, l := range locks {
		l.unlock()
	}
}
