package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// blobFile is where FS keeps the content of d (the layout in FS's doc).
func blobFile(root string, d digest.Digest) string {
	return filepath.Join(root, "blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded())
}

// corrupt flips the first byte of the stored content of d.
func corrupt(t *testing.T, root string, d digest.Digest) []byte {
	t.Helper()
	path := blobFile(root, d)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[0] ^= 0xff
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

func putBlob(t *testing.T, s *store.FS, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	if err := s.PutBlob(context.Background(), repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatalf("PutBlob: %v", err)
	}
	return d
}

func TestQuarantineCorruptBlob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := t.TempDir()
	now := time.Unix(1700000000, 0)
	s := newFS(t, root, store.WithClock(func() time.Time { return now }))
	good := []byte("the blob as it was pushed")
	d := putBlob(t, s, good)
	bad := corrupt(t, root, d)

	got, err := s.Quarantine(ctx, d)
	if err != nil {
		t.Fatalf("Quarantine: %v", err)
	}
	want := filepath.Join(root, "quarantine", "sha256-"+d.Encoded()+"-1700000000")
	if got != want {
		t.Fatalf("Quarantine path %q, want %q", got, want)
	}
	if data, err := os.ReadFile(got); err != nil || !bytes.Equal(data, bad) {
		t.Fatalf("quarantined file: %q, %v; want the corrupt bytes", data, err)
	}

	// The link stays, the content is gone: every read path says unknown.
	if _, err := s.StatBlob(ctx, repo, d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Errorf("StatBlob after quarantine: %v, want %v", err, store.ErrBlobUnknown)
	}
	if b, err := s.OpenBlob(ctx, repo, d); !errors.Is(err, store.ErrBlobUnknown) {
		if err == nil {
			b.Close()
		}
		t.Errorf("OpenBlob after quarantine: %v, want %v", err, store.ErrBlobUnknown)
	}
	if _, err := s.HasBlob(ctx, d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Errorf("HasBlob after quarantine: %v, want %v", err, store.ErrBlobUnknown)
	}
	if _, err := s.OpenContent(ctx, d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Errorf("OpenContent after quarantine: %v, want %v", err, store.ErrBlobUnknown)
	}
	if err := s.LinkBlob(ctx, store.Repo{Registry: "hub", Name: "other"}, d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Errorf("LinkBlob after quarantine: %v, want %v", err, store.ErrBlobUnknown)
	}
	err = s.Blobs(ctx, func(b digest.Digest, _ int64) error {
		if b == d {
			t.Errorf("Blobs still lists %s", d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Stored again (as a re-fetch would), it is served again.
	putBlob(t, s, good)
	if n, err := s.StatBlob(ctx, repo, d); err != nil || n != int64(len(good)) {
		t.Fatalf("StatBlob after re-store: %d, %v", n, err)
	}

	// A second quarantine in the same second gets a name of its own.
	corrupt(t, root, d)
	again, err := s.Quarantine(ctx, d)
	if err != nil {
		t.Fatalf("second Quarantine: %v", err)
	}
	if again != want+"-1" {
		t.Fatalf("second Quarantine path %q, want %q", again, want+"-1")
	}
}

func TestQuarantineLeavesIntactContent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := t.TempDir()
	s := newFS(t, root)
	data := []byte("intact")
	d := putBlob(t, s, data)
	got, err := s.Quarantine(ctx, d)
	if err != nil || got != "" {
		t.Fatalf("Quarantine of intact content: %q, %v; want \"\", nil", got, err)
	}
	b, err := s.OpenBlob(ctx, repo, d)
	if err != nil {
		t.Fatalf("OpenBlob after refused quarantine: %v", err)
	}
	defer b.Close()
	if read, err := io.ReadAll(b); err != nil || !bytes.Equal(read, data) {
		t.Fatalf("content after refused quarantine: %q, %v", read, err)
	}
	if _, err := os.Stat(filepath.Join(root, "quarantine")); err == nil {
		entries, _ := os.ReadDir(filepath.Join(root, "quarantine"))
		if len(entries) != 0 {
			t.Fatalf("quarantine holds %d files", len(entries))
		}
	}
}

func TestQuarantineErrors(t *testing.T) {
	t.Parallel()
	s := newFS(t, t.TempDir())
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	absent := digest.FromString("never stored")
	tests := []struct {
		name string
		ctx  context.Context
		d    digest.Digest
		want error
	}{
		{"unknown", context.Background(), absent, store.ErrBlobUnknown},
		{"invalid digest", context.Background(), "sha256:nothex", store.ErrInvalid},
		{"cancelled", cancelled, absent, context.Canceled},
	}
	for _, tc := range tests {
		if _, err := s.Quarantine(tc.ctx, tc.d); !errors.Is(err, tc.want) {
			t.Errorf("%s: Quarantine error %v, want %v", tc.name, err, tc.want)
		}
		if _, err := s.OpenContent(tc.ctx, tc.d); !errors.Is(err, tc.want) {
			t.Errorf("%s: OpenContent error %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestQuarantineHonoursContextWhileHashing(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newFS(t, root)
	d := putBlob(t, s, bytes.Repeat([]byte("x"), 8<<20))
	corrupt(t, root, d)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Quarantine(ctx, d); !errors.Is(err, context.Canceled) {
		t.Fatalf("Quarantine with cancelled context: %v", err)
	}
	if _, err := s.HasBlob(context.Background(), d); err != nil {
		t.Fatalf("cancelled Quarantine moved the blob: %v", err)
	}
}

// TestOpenContentIgnoresLinks reads content no repository links.
func TestOpenContentIgnoresLinks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newFS(t, t.TempDir())
	data := []byte("linked nowhere")
	d := putBlob(t, s, data)
	if err := s.UnlinkBlob(ctx, repo, d); err != nil {
		t.Fatal(err)
	}
	b, err := s.OpenContent(ctx, d)
	if err != nil {
		t.Fatalf("OpenContent: %v", err)
	}
	defer b.Close()
	read, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(read, data) || b.Size() != int64(len(data)) {
		t.Fatalf("OpenContent read %q (size %d), %v", read, b.Size(), err)
	}
}

// TestQuarantineRacesWithRewrite quarantines a corrupt blob from several
// goroutines while good content is stored again: good content is never
// quarantined, and what stays in blobs/ is intact.
func TestQuarantineRacesWithRewrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for i := range 20 {
		root := t.TempDir()
		s := newFS(t, root)
		good := []byte("round " + strconv.Itoa(i))
		d := putBlob(t, s, good)
		corrupt(t, root, d)

		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if _, err := s.Quarantine(ctx, d); err != nil && !errors.Is(err, store.ErrBlobUnknown) {
					t.Errorf("Quarantine: %v", err)
				}
			})
		}
		wg.Go(func() {
			for range 3 {
				if err := s.PutBlob(ctx, repo, d, int64(len(good)), bytes.NewReader(good)); err != nil {
					t.Errorf("PutBlob: %v", err)
				}
			}
		})
		wg.Wait()

		entries, err := os.ReadDir(filepath.Join(root, "quarantine"))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(root, "quarantine", e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if digest.FromBytes(data) == d {
				t.Fatalf("round %d: intact content was quarantined as %s", i, e.Name())
			}
		}
		if data, err := os.ReadFile(blobFile(root, d)); err == nil && digest.FromBytes(data) != d {
			// The first quarantine to take the lock finds the corrupt
			// file (nothing else removes it) and moves it.
			t.Fatalf("round %d: corrupt content left in blobs/", i)
		}
	}
}
