package storetest

import (
	"bytes"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

func testBlobRoundTrip(t *testing.T, s store.Store) {
	tests := []struct {
		name      string
		alg       digest.Algorithm
		size      int
		knownSize bool
	}{
		{"sha256 empty", digest.SHA256, 0, true},
		{"sha256 small", digest.SHA256, 17, true},
		{"sha256 1MiB unknown size", digest.SHA256, 1 << 20, false},
		{"sha512 small", digest.SHA512, 33, true},
		{"sha512 1MiB unknown size", digest.SHA512, 1 << 20, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := content(tc.name, tc.size)
			d := tc.alg.FromBytes(data)
			size := int64(-1)
			if tc.knownSize {
				size = int64(len(data))
			}
			if err := s.PutBlob(t.Context(), repoA, d, size, bytes.NewReader(data)); err != nil {
				t.Fatalf("PutBlob: %v", err)
			}
			if got, err := s.StatBlob(t.Context(), repoA, d); err != nil || got != int64(len(data)) {
				t.Errorf("StatBlob = %d, %v; want %d", got, err, len(data))
			}
			if got, err := s.HasBlob(t.Context(), d); err != nil || got != int64(len(data)) {
				t.Errorf("HasBlob = %d, %v; want %d", got, err, len(data))
			}
			if got := readBlob(t, s, repoA, d); !bytes.Equal(got, data) {
				t.Errorf("read back %d bytes, differ from the %d put", len(got), len(data))
			}
			// Putting it again is fine and changes nothing.
			if err := s.PutBlob(t.Context(), repoA, d, size, bytes.NewReader(data)); err != nil {
				t.Fatalf("second PutBlob: %v", err)
			}
		})
	}
}

func testBlobDigestMismatch(t *testing.T, s store.Store) {
	data := content("mismatch", 1000)
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		d := alg.FromBytes(content("other", 1000))
		err := s.PutBlob(t.Context(), repoA, d, int64(len(data)), bytes.NewReader(data))
		wantErr(t, "PutBlob with the wrong digest", err, store.ErrDigestMismatch)
		wantNoBlob(t, s, repoA, d)
		wantNoBlob(t, s, repoA, alg.FromBytes(data))
	}
	if got := collectBlobs(t, s); len(got) != 0 {
		t.Errorf("Blobs after failed puts = %v, want none", got)
	}
}

func testBlobSizeMismatch(t *testing.T, s store.Store) {
	data := content("size", 100)
	d := digest.SHA256.FromBytes(data)
	for _, size := range []int64{0, 99, 101} {
		err := s.PutBlob(t.Context(), repoA, d, size, bytes.NewReader(data))
		wantErr(t, "PutBlob with the wrong size", err, store.ErrSizeMismatch)
		wantNoBlob(t, s, repoA, d)
	}
}

func testBlobVisibility(t *testing.T, s store.Store) {
	ctx := t.Context()
	data := content("visibility", 64)
	d := putBlob(t, s, repoA, data)

	for _, r := range []store.Repo{repoB, repoC} {
		_, err := s.StatBlob(ctx, r, d)
		wantErr(t, "StatBlob in an unlinked repo", err, store.ErrBlobUnknown)
		_, err = s.OpenBlob(ctx, r, d)
		wantErr(t, "OpenBlob in an unlinked repo", err, store.ErrBlobUnknown)
	}

	if err := s.LinkBlob(ctx, repoB, d); err != nil {
		t.Fatalf("LinkBlob: %v", err)
	}
	if err := s.LinkBlob(ctx, repoB, d); err != nil {
		t.Fatalf("LinkBlob twice: %v", err)
	}
	if got := readBlob(t, s, repoB, d); !bytes.Equal(got, data) {
		t.Errorf("linked blob reads differently")
	}

	if err := s.UnlinkBlob(ctx, repoA, d); err != nil {
		t.Fatalf("UnlinkBlob: %v", err)
	}
	_, err := s.StatBlob(ctx, repoA, d)
	wantErr(t, "StatBlob after UnlinkBlob", err, store.ErrBlobUnknown)
	wantErr(t, "UnlinkBlob twice", s.UnlinkBlob(ctx, repoA, d), store.ErrBlobUnknown)
	if _, err := s.StatBlob(ctx, repoB, d); err != nil {
		t.Errorf("StatBlob in the other repo after UnlinkBlob: %v", err)
	}
	if _, err := s.HasBlob(ctx, d); err != nil {
		t.Errorf("HasBlob after UnlinkBlob: %v", err)
	}

	unknown := digest.SHA256.FromString("never stored")
	wantErr(t, "LinkBlob of an unknown blob", s.LinkBlob(ctx, repoA, unknown), store.ErrBlobUnknown)
	wantNoBlob(t, s, repoA, unknown)
}

func testBlobConcurrentPut(t *testing.T, s store.Store) {
	data := content("concurrent", 256<<10)
	d := digest.SHA256.FromBytes(data)
	repos := []store.Repo{repoA, repoB}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			errs <- s.PutBlob(t.Context(), repos[i%2], d, int64(len(data)), bytes.NewReader(data))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent PutBlob: %v", err)
		}
	}
	for _, r := range repos {
		if got := readBlob(t, s, r, d); !bytes.Equal(got, data) {
			t.Errorf("blob in %s differs after concurrent puts", r)
		}
	}
	if got := collectBlobs(t, s); len(got) != 1 || got[d] != int64(len(data)) {
		t.Errorf("Blobs = %v, want only %s", got, d)
	}
}
