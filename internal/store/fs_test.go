package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/store/storetest"
)

var repo = store.Repo{Registry: "hub", Name: "library/alpine"}

func newFS(t *testing.T, root string, opts ...store.Option) *store.FS {
	t.Helper()
	s, err := store.NewFS(root, opts...)
	if err != nil {
		t.Fatalf("NewFS: %v", err)
	}
	return s
}

func TestFS(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts ...store.Option) store.Store { return newFS(t, t.TempDir(), opts...) })
}

func TestNewFSOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		root string
		opts []store.Option
	}{
		{"empty root", "", nil},
		{"nil clock", t.TempDir(), []store.Option{store.WithClock(nil)}},
		{"zero temp age", t.TempDir(), []store.Option{store.WithTempMaxAge(0)}},
	}
	for _, tc := range tests {
		if _, err := store.NewFS(tc.root, tc.opts...); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: NewFS error %v, want %v", tc.name, err, store.ErrInvalid)
		}
	}
}

// TestFSInvalidStaysInRoot runs the invalid-input suite and checks that no
// file or directory appeared, inside the root or beside it.
func TestFSInvalidStaysInRoot(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	root := filepath.Join(parent, "data", "store")
	s := newFS(t, root)
	storetest.RunInvalid(t, s)

	err := filepath.WalkDir(parent, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(parent, path)
		switch rel {
		case ".", "data", filepath.Join("data", "store"):
			return nil
		}
		for _, dir := range []string{"blobs", "tmp", "uploads", "registries"} {
			if rel == filepath.Join("data", "store", dir) {
				return nil
			}
		}
		t.Errorf("invalid calls created %s", rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestFSLayout(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newFS(t, root)
	data := []byte("layout")
	d := digest.SHA256.FromBytes(data)
	if err := s.PutBlob(t.Context(), repo, d, -1, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	hex := d.Encoded()
	for _, p := range []string{
		filepath.Join("blobs", "sha256", hex[:2], hex),
		filepath.Join("registries", "hub", "repos", "library", "alpine", "_blobs", "sha256", hex),
	} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("layout: %v", err)
		}
	}
	if entries, err := os.ReadDir(filepath.Join(root, "tmp")); err != nil || len(entries) != 0 {
		t.Errorf("tmp/ after a put = %v, %v; want empty", entries, err)
	}
}

// TestFSDeleteManifestFiles: DeleteManifest removes the link, the blob
// link, its tags and its referrers entry from disk, not just from view.
func TestFSDeleteManifestFiles(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newFS(t, root)
	subject := store.Manifest{MediaType: ocispec.MediaTypeImageManifest, Data: []byte(`{"schemaVersion":2}`)}
	subject.Digest = digest.SHA256.FromBytes(subject.Data)
	if err := s.PutManifest(t.Context(), repo, subject, store.PutManifestOptions{}); err != nil {
		t.Fatal(err)
	}
	sig := store.Manifest{MediaType: ocispec.MediaTypeImageManifest}
	sig.Data = []byte(`{"schemaVersion":2,"subject":{"digest":"` + subject.Digest.String() + `"}}`)
	sig.Digest = digest.SHA256.FromBytes(sig.Data)
	opts := store.PutManifestOptions{Tag: "sig", Subject: &ocispec.Descriptor{Digest: subject.Digest}}
	if err := s.PutManifest(t.Context(), repo, sig, opts); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(root, "registries", "hub", "repos", "library", "alpine")
	hex := sig.Digest.Encoded()
	files := []string{
		filepath.Join(repoDir, "_manifests", "sha256", hex),
		filepath.Join(repoDir, "_blobs", "sha256", hex),
		filepath.Join(repoDir, "_tags", "sig"),
		filepath.Join(repoDir, "_referrers", "sha256", subject.Digest.Encoded(), "sha256-"+hex),
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("before delete: %v", err)
		}
	}
	if err := s.DeleteManifest(t.Context(), repo, sig.Digest); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after delete: %s: %v, want it removed", f, err)
		}
	}
}

// TestFSCrashLeftovers: a temporary file left by a crash is never visible,
// and NewFS removes it once it is old.
func TestFSCrashLeftovers(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newFS(t, root)
	data := []byte("half written")
	d := digest.SHA256.FromBytes(data)
	old := filepath.Join(root, "tmp", "blob-1234")
	fresh := filepath.Join(root, "tmp", "blob-5678")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(old, time.Now().Add(-2*time.Hour), time.Now().Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HasBlob(t.Context(), d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Errorf("HasBlob of a leftover = %v, want %v", err, store.ErrBlobUnknown)
	}
	if err := s.Blobs(t.Context(), func(d digest.Digest, _ int64) error {
		t.Errorf("Blobs yields leftover %s", d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	newFS(t, root)
	if _, err := os.Stat(old); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old leftover after NewFS: %v, want it removed", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temporary file after NewFS: %v, want it kept", err)
	}
}

func TestFSFile(t *testing.T) {
	t.Parallel()
	s := newFS(t, t.TempDir())
	data := []byte("0123456789")
	d := digest.SHA256.FromBytes(data)
	if err := s.PutBlob(t.Context(), repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	b, err := s.OpenBlob(t.Context(), repo, d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	seeker, ok := b.(io.Seeker)
	if !ok {
		t.Fatalf("%T is not an io.Seeker", b)
	}
	if _, err := seeker.Seek(4, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	f, ok := store.File(b)
	if !ok {
		t.Fatalf("File(%T) = false, want the *os.File", b)
	}
	rest, err := io.ReadAll(f)
	if err != nil || string(rest) != "456789" {
		t.Errorf("reading the file after Seek(4) = %q, %v", rest, err)
	}
	if _, ok := store.File(otherBlob{}); ok {
		t.Errorf("File of a foreign Blob = true")
	}
}

type otherBlob struct{ io.ReadCloser }

func (otherBlob) Size() int64 { return 0 }

// TestFSUploadAcrossRestart: the hash state lives on disk, so a session
// continues in a new process; bytes of an append that crashed before its
// bookkeeping are dropped.
func TestFSUploadAcrossRestart(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := bytes.Repeat([]byte("regwarm "), 4096)
	d := digest.SHA256.FromBytes(data)

	s1 := newFS(t, root)
	st, err := s1.StartUpload(t.Context(), repo, store.StartUploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.AppendUpload(t.Context(), repo, st.ID, 0, bytes.NewReader(data[:1000])); err != nil {
		t.Fatal(err)
	}
	// A crashed append wrote bytes but never recorded them.
	f, err := os.OpenFile(filepath.Join(root, "uploads", st.ID, "data"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("garbage"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := newFS(t, root)
	if _, err := s2.AppendUpload(t.Context(), repo, st.ID, 1000, bytes.NewReader(data[1000:])); err != nil {
		t.Fatal(err)
	}
	if n, err := s2.CommitUpload(t.Context(), repo, st.ID, d); err != nil || n != int64(len(data)) {
		t.Fatalf("CommitUpload = %d, %v", n, err)
	}
	if _, err := os.Stat(filepath.Join(root, "uploads", st.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("upload directory after commit: %v, want it removed", err)
	}
}

// patternReader yields n bytes: one pseudo-random 64 KiB block, repeated.
type patternReader struct {
	block []byte
	off   int64
	n     int64
}

func newPatternReader(n int64) *patternReader {
	block := make([]byte, 64<<10)
	rng := rand.New(rand.NewChaCha8([32]byte{'r', 'e', 'g', 'w', 'a', 'r', 'm'}))
	for i := range block {
		block[i] = byte(rng.Uint32())
	}
	return &patternReader{block: block, n: n}
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	n := 0
	for n < len(b) {
		i := (p.off + int64(n)) % int64(len(p.block))
		n += copy(b[n:], p.block[i:])
	}
	p.off += int64(n)
	return n, nil
}

// TestFSLargeBlobMemory puts a blob larger than 64 MiB and checks that it
// streamed: the heap allocated meanwhile is a small fraction of its size.
func TestFSLargeBlobMemory(t *testing.T) {
	const size = 72 << 20
	if testing.Short() {
		t.Skip("writes 72 MiB")
	}
	s := newFS(t, t.TempDir())
	h := digest.SHA256.Digester()
	if _, err := io.Copy(h.Hash(), newPatternReader(size)); err != nil {
		t.Fatal(err)
	}
	d := h.Digest()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := s.PutBlob(context.Background(), repo, d, size, newPatternReader(size)); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Errorf("PutBlob of %d MiB allocated %d MiB, want it streamed", size>>20, grew>>20)
	}
	if got, err := s.HasBlob(context.Background(), d); err != nil || got != size {
		t.Errorf("HasBlob = %d, %v; want %d", got, err, size)
	}
}

func TestFSPutVerifiedBlob(t *testing.T) {
	st := newFS(t, t.TempDir())
	ctx := context.Background()
	data := []byte("verified by the caller")
	d := digest.FromBytes(data)
	a, b := store.Repo{Registry: "hub", Name: "a"}, store.Repo{Registry: "hub", Name: "b"}
	if err := st.PutVerifiedBlob(ctx, a, d, data); err != nil {
		t.Fatal(err)
	}
	// Content already stored: only the link is added.
	if err := st.PutVerifiedBlob(ctx, b, d, data); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []store.Repo{a, b} {
		blob, err := st.OpenBlob(ctx, repo, d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(blob)
		_ = blob.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %q, %v", repo, got, err)
		}
	}
	if err := st.PutVerifiedBlob(ctx, a, "sha256:bad", data); err == nil {
		t.Fatalf("invalid digest: %v", err)
	}
}
