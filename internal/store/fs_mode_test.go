package store_test

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// TestFSModes checks that everything the store creates (blobs, links,
// manifests, tags, uploads, spools, quarantine) is private to regwarm's
// user whatever the umask, or group-readable when asked. Not parallel: it
// changes the process umask.
func TestFSModes(t *testing.T) {
	tests := []struct {
		name      string
		umask     int
		opts      []store.Option
		file, dir fs.FileMode
		setgid    bool // data_dir has the setgid bit: every new directory keeps it
	}{
		{"private under umask 0", 0, nil, 0o600, 0o700, false},
		{"private under umask 022", 0o022, nil, 0o600, 0o700, false},
		{"group readable under umask 077", 0o077, []store.Option{store.WithGroupReadable(true)}, 0o640, 0o750, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old := syscall.Umask(tc.umask)
			defer syscall.Umask(old)
			root := filepath.Join(t.TempDir(), "data", "store")
			if tc.setgid {
				if err := os.Mkdir(filepath.Dir(root), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(filepath.Dir(root), 0o750|fs.ModeSetgid); err != nil {
					t.Fatal(err)
				}
			}
			s := newFS(t, root, tc.opts...)
			fill(t, s)
			seen := 0
			err := filepath.WalkDir(filepath.Dir(root), func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				info, err := d.Info()
				if err != nil {
					return err
				}
				want := tc.file
				if d.IsDir() {
					want = tc.dir
				}
				if path == filepath.Dir(filepath.Dir(root)) {
					return nil // t.TempDir itself
				}
				seen++
				if got := info.Mode().Perm(); got != want {
					t.Errorf("%s: mode %v, want %v", path, got, want)
				}
				if d.IsDir() && tc.setgid && info.Mode()&fs.ModeSetgid == 0 {
					t.Errorf("%s: lost the setgid bit (%v)", path, info.Mode())
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if seen < 20 {
				t.Errorf("walked %d entries, want the whole store", seen)
			}
		})
	}
}

// fill writes one of everything.
func fill(t *testing.T, s *store.FS) {
	t.Helper()
	ctx := t.Context()
	data := []byte("private layer")
	d := digest.FromBytes(data)
	if err := s.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	m := store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Data: []byte(`{"schemaVersion":2}`)}
	m.Digest = digest.FromBytes(m.Data)
	if err := s.PutManifest(ctx, repo, m, store.PutManifestOptions{Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	st, err := s.StartUpload(ctx, repo, store.StartUploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(ctx, repo, st.ID, 0, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	spooled := []byte("spooled layer")
	sp, err := s.Spool(ctx, digest.FromBytes(spooled), int64(len(spooled)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sp.Close() }() // discards the spool if a check failed first
	if _, err := sp.Write(spooled); err != nil {
		t.Fatal(err)
	}
	if err := sp.Commit(ctx, store.Repo{Registry: "other", Name: "x"}); err != nil {
		t.Fatal(err)
	}
	bad := []byte("bytes that will not match")
	bd := digest.FromString("something else")
	if err := s.PutVerifiedBlob(ctx, repo, bd, bad); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Quarantine(ctx, bd); err != nil {
		t.Fatal(err)
	}
}

// TestFSOldModesKeepWorking: a store written by an earlier version (0644
// files, 0755 directories) opens, serves and takes new content; what exists
// keeps its mode.
func TestFSOldModesKeepWorking(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newFS(t, root)
	old := []byte("old layer")
	od := digest.FromBytes(old)
	if err := s.PutBlob(t.Context(), repo, od, int64(len(old)), bytes.NewReader(old)); err != nil {
		t.Fatal(err)
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(path, mode)
	})
	if err != nil {
		t.Fatal(err)
	}
	s = newFS(t, root)
	b, err := s.OpenBlob(t.Context(), repo, od)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	fresh := []byte("new layer")
	if err := s.PutBlob(t.Context(), store.Repo{Registry: "hub", Name: "new/repo"}, digest.FromBytes(fresh), int64(len(fresh)), bytes.NewReader(fresh)); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]fs.FileMode{
		filepath.Join(root, "blobs"):                             0o755, // existing: left alone
		filepath.Join(root, "registries", "hub", "repos", "new"): 0o700, // new
	} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
}
