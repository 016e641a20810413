package jobs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestReportModes checks that reports (which name private repositories and
// digests) are readable by regwarm's user only, whatever the umask. Not
// parallel: it changes the process umask.
func TestReportModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "reports")
	r := &Report{Version: 1, Job: "gc", Started: time.Now(), Finished: time.Now()}
	if err := r.Save(dir); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, r.Path: 0o600, filepath.Join(dir, "gc-latest.json"): 0o600} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
}
