package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Environment of the child process of TestFSRemoveKill9.
const (
	kill9Root = "REGWARM_TEST_KILL9_ROOT"
	kill9Kind = "REGWARM_TEST_KILL9_KIND"
	kill9Step = "REGWARM_TEST_KILL9_STEP"
)

// kill9Fixture is what the removals of TestFSRemoveKill9 act on: a blob
// linked in repo, and a manifest referencing it under tag v1.
type kill9Fixture struct {
	repo Repo
	blob []byte
	man  Manifest
}

func newKill9Fixture() kill9Fixture {
	blob := []byte("layer that must survive a crash")
	bd := digest.FromBytes(blob)
	data := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[]}`,
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, bd, len(blob))
	return kill9Fixture{
		repo: Repo{Registry: "hub", Name: "team/app"},
		blob: blob,
		man:  Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Data: data},
	}
}

// remove runs the removal of kind with a cutoff that finds every item
// unused.
func (k kill9Fixture) remove(ctx context.Context, f *FS, kind string) (bool, error) {
	cutoff := time.Now().Add(time.Hour)
	switch kind {
	case "tag":
		return f.RemoveTag(ctx, k.repo, "v1", k.man.Digest)
	case "manifest":
		return f.RemoveManifest(ctx, k.repo, k.man.Digest, cutoff)
	case "link":
		return f.RemoveBlobLink(ctx, k.repo, digest.FromBytes(k.blob), cutoff)
	case "blob":
		_, ok, err := f.RemoveBlob(ctx, digest.FromBytes(k.blob), cutoff)
		return ok, err
	}
	return false, fmt.Errorf("unknown kind %q", kind)
}

// present reports whether the item of kind is visible, with its bytes.
func (k kill9Fixture) present(ctx context.Context, f *FS, kind string) error {
	switch kind {
	case "tag":
		ti, err := f.Tag(ctx, k.repo, "v1")
		if err == nil && ti.Digest != k.man.Digest {
			err = fmt.Errorf("tag points at %s", ti.Digest)
		}
		return err
	case "manifest":
		m, err := f.Manifest(ctx, k.repo, k.man.Digest)
		if err == nil && !bytes.Equal(m.Data, k.man.Data) {
			err = errors.New("manifest bytes differ")
		}
		return err
	}
	// link and blob: the blob is readable through the repository.
	b, err := f.OpenBlob(ctx, k.repo, digest.FromBytes(k.blob))
	if err != nil {
		return err
	}
	defer b.Close()
	got, err := os.ReadFile(f.blobPath(digest.FromBytes(k.blob)))
	if err == nil && !bytes.Equal(got, k.blob) {
		err = errors.New("blob bytes differ")
	}
	return err
}

// TestFSRemoveKill9Child is the process TestFSRemoveKill9 kills: it
// removes one item and SIGKILLs itself at the given step of the removal.
// Without the environment it does nothing.
func TestFSRemoveKill9Child(t *testing.T) {
	root := os.Getenv(kill9Root)
	if root == "" {
		return
	}
	f, err := NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	step := os.Getenv(kill9Step)
	f.removeHook = func(s string) {
		if s == step {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
	ok, err := newKill9Fixture().remove(context.Background(), f, os.Getenv(kill9Kind))
	t.Fatalf("removal finished (%v, %v): step %q never reached", ok, err, step)
}

// TestFSRemoveKill9: a process killed with SIGKILL at each step of each
// kind of removal (before the item moves to trash/, with the item in
// trash/, after deciding to delete it) leaves an item that the next
// process's RecoverRemovals brings back intact (a half-removed one) or
// that never left; the next removal then finishes and leaves no trash.
func TestFSRemoveKill9(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"tag", "manifest", "link", "blob"} {
		for _, step := range []string{removeWritten, removeTrashed, removeDecided} {
			t.Run(kind+"/"+step, func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				root := t.TempDir()
				k := newKill9Fixture()
				f, err := NewFS(root)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.PutBlob(ctx, k.repo, digest.FromBytes(k.blob), int64(len(k.blob)), bytes.NewReader(k.blob)); err != nil {
					t.Fatal(err)
				}
				if err := f.PutManifest(ctx, k.repo, k.man, PutManifestOptions{Tag: "v1", Source: "up"}); err != nil {
					t.Fatal(err)
				}

				cmd := exec.Command(os.Args[0], "-test.run=^TestFSRemoveKill9Child$", "-test.count=1")
				cmd.Env = append(os.Environ(), kill9Root+"="+root, kill9Kind+"="+kind, kill9Step+"="+step)
				out, err := cmd.CombinedOutput()
				ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
				if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
					t.Fatalf("child not killed (%v):\n%s", err, out)
				}
				entries, _ := filepath.Glob(filepath.Join(root, "trash", "*", "*", "path"))
				half, _ := filepath.Glob(filepath.Join(root, "trash", "*", "*", "data"))
				if len(entries) != 1 {
					t.Fatalf("trash entries after the kill: %v, want 1", entries)
				}
				wantHalf := 1
				if step == removeWritten {
					wantHalf = 0
				}
				if len(half) != wantHalf {
					t.Fatalf("half-removed items after the kill at %s: %v, want %d", step, half, wantHalf)
				}

				next, err := NewFS(root)
				if err != nil {
					t.Fatal(err)
				}
				if half := len(half) == 1; half == (k.present(ctx, next, kind) == nil) {
					t.Fatalf("%s visible while half-removed: %v", kind, !half)
				}
				n, err := next.RecoverRemovals(ctx)
				if err != nil || n != wantHalf {
					t.Fatalf("RecoverRemovals = %d, %v; want %d", n, err, wantHalf)
				}
				if err := k.present(ctx, next, kind); err != nil {
					t.Fatalf("%s after recovery: %v", kind, err)
				}
				// The next run finishes the removal.
				if ok, err := k.remove(ctx, next, kind); err != nil || !ok {
					t.Fatalf("removal after recovery = %v, %v", ok, err)
				}
				if err := k.present(ctx, next, kind); err == nil {
					t.Fatalf("%s still there after the second removal", kind)
				}
				if left, _ := filepath.Glob(filepath.Join(root, "trash", "*", "*")); len(left) != 1 || filepath.Base(left[0]) != "lock" {
					t.Errorf("trash/ after the second removal: %v, want only the live session's lock", left)
				}
			})
		}
	}
}
