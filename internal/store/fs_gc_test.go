package store_test

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// TestFSRecoverRemovals: removals a crash interrupted (the item renamed
// into trash/, not yet deleted or put back) are undone by the next run.
func TestFSRecoverRemovals(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	root := t.TempDir()
	s := newFS(t, root)
	data := []byte("layer kept through a crash")
	d := digest.FromBytes(data)
	if err := s.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	blobRel := filepath.Join("blobs", "sha256", d.Encoded()[:2], d.Encoded())
	linkRel := filepath.Join("registries", "hub", "repos", "library", "alpine", "_blobs", "sha256", d.Encoded())
	crash := func(id, rel string, move bool) {
		dir := filepath.Join(root, "trash", "dead-session", id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "path"), []byte(filepath.ToSlash(rel)), 0o600); err != nil {
			t.Fatal(err)
		}
		if move {
			if err := os.Rename(filepath.Join(root, rel), filepath.Join(dir, "data")); err != nil {
				t.Fatal(err)
			}
		}
	}
	crash("a", blobRel, true)
	crash("b", linkRel, true)
	crash("c", blobRel, false) // crashed before the rename
	if _, err := s.HasBlob(ctx, d); err == nil {
		t.Fatal("the blob is visible while in trash/")
	}
	n, err := s.RecoverRemovals(ctx)
	if err != nil || n != 2 {
		t.Fatalf("RecoverRemovals = %d, %v; want 2", n, err)
	}
	b, err := s.OpenBlob(ctx, repo, d)
	if err != nil {
		t.Fatalf("OpenBlob after recovery: %v", err)
	}
	_ = b.Close()
	if left, _ := os.ReadDir(filepath.Join(root, "trash")); len(left) != 0 {
		t.Errorf("trash/ after recovery: %d entries", len(left))
	}

	// The session of a live process (its lock held) is left alone.
	crash("e", blobRel, true)
	lock, err := os.Create(filepath.Join(root, "trash", "dead-session", "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if n, err := s.RecoverRemovals(ctx); err != nil || n != 0 {
		t.Fatalf("RecoverRemovals of a live session = %d, %v; want 0", n, err)
	}
	_ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if n, err := s.RecoverRemovals(ctx); err != nil || n != 1 {
		t.Fatalf("RecoverRemovals after the process let go = %d, %v; want 1", n, err)
	}

	// A copy written meanwhile wins; the trashed one is dropped.
	crash("d", blobRel, true)
	if err := s.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if n, err := s.RecoverRemovals(ctx); err != nil || n != 1 {
		t.Fatalf("RecoverRemovals = %d, %v; want 1", n, err)
	}
	if got, err := os.ReadFile(filepath.Join(root, blobRel)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob after recovery: %q, %v", got, err)
	}
	if _, ok := any(s).(store.Collector); !ok {
		t.Fatal("FS is not a Collector")
	}
}
