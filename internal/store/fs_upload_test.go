package store_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/store"
)

// TestFSExpireOldSessions: sessions written by earlier versions (no
// "updated" field) and starts cut short by a crash (no info.json) expire
// too.
func TestFSExpireOldSessions(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	newFS(t, root)
	old := filepath.Join(root, "uploads", "0b7c5f8e-8a4f-4d8e-9d7e-2f3c4b5a6d7e")
	broken := filepath.Join(root, "uploads", "1b7c5f8e-8a4f-4d8e-9d7e-2f3c4b5a6d7e")
	for _, dir := range []string{old, broken} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	started := time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339Nano)
	info := `{"registry":"hub","repo":"library/alpine","started":"` + started + `","offset":0,"sha256State":null}`
	if err := os.WriteFile(filepath.Join(old, "info.json"), []byte(info), 0o600); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(broken, past, past); err != nil {
		t.Fatal(err)
	}
	s := newFS(t, root, store.WithUploadExpiry(24*time.Hour))
	n, err := s.ExpireUploads(t.Context(), time.Now().Add(-24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("ExpireUploads = %d, %v; want 2", n, err)
	}
	for _, dir := range []string{old, broken} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", dir, err)
		}
	}
}

// TestFSExpireSparesChunkInFlight: a chunk still arriving in another
// process (whose lock this one cannot see) moves the data file's time, and
// the session is not expired under it.
func TestFSExpireSparesChunkInFlight(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	s := newFS(t, root, store.WithClock(func() time.Time { return now }))
	st, err := s.StartUpload(t.Context(), repo, store.StartUploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	data := filepath.Join(root, "uploads", st.ID, "data")
	if err := os.Chtimes(data, now, now); err != nil { // another process writing
		t.Fatal(err)
	}
	if n, err := s.ExpireUploads(t.Context(), now.Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("ExpireUploads during a chunk = %d, %v; want 0", n, err)
	}
	now = now.Add(2 * time.Hour)
	if n, err := s.ExpireUploads(t.Context(), now.Add(-time.Hour)); err != nil || n != 1 {
		t.Fatalf("ExpireUploads after it = %d, %v; want 1", n, err)
	}
}
