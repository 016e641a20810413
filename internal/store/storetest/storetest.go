// Package storetest is the test suite every store.Store backend passes.
//
// A backend's test calls Run with a constructor of empty stores that
// honours the store options (the clock and the upload expiry):
//
//	func TestFS(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, opts ...store.Option) store.Store { … })
//	}
package storetest

import (
	"bytes"
	_ "crypto/sha512" // registers digest.SHA512
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/store"
)

// NewStore returns a new, empty store configured by opts.
type NewStore func(t *testing.T, opts ...store.Option) store.Store

// Run runs the whole suite. newStore must return a new, empty store; each
// subtest gets its own and runs in parallel with the others.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"BlobRoundTrip", testBlobRoundTrip},
		{"BlobDigestMismatch", testBlobDigestMismatch},
		{"BlobSizeMismatch", testBlobSizeMismatch},
		{"BlobVisibility", testBlobVisibility},
		{"BlobConcurrentPut", testBlobConcurrentPut},
		{"ManifestLifecycle", testManifestLifecycle},
		{"ManifestDigestMismatch", testManifestDigestMismatch},
		{"ManifestSHA512", testManifestSHA512},
		{"ManifestRepoIsolation", testManifestRepoIsolation},
		{"Referrers", testReferrers},
		{"UploadSingle", testUploadSingle},
		{"UploadChunks", testUploadChunks},
		{"UploadOutOfOrder", testUploadOutOfOrder},
		{"UploadWrongDigest", testUploadWrongDigest},
		{"UploadCancel", testUploadCancel},
		{"UploadWrongRepo", testUploadWrongRepo},
		{"UploadFailedChunk", testUploadFailedChunk},
		{"Invalid", RunInvalid},
		{"WalkRepositories", testWalkRepositories},
		{"WalkManifestsAndBlobs", testWalkManifestsAndBlobs},
		{"WalkStops", testWalkStops},
		{"ContextCanceled", testContextCanceled},
		{"ContextCanceledMidStream", testContextCanceledMidStream},
		{"Pulls", testPulls},
		{"PullsConcurrent", testPullsConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
	// Tests that build their stores with options.
	configured := []struct {
		name string
		fn   func(*testing.T, NewStore)
	}{
		{"UploadExpiry", testUploadExpiry},
		{"UploadExpiryOnUse", testUploadExpiryOnUse},
		{"UploadCaps", testUploadCaps},
		{"UploadOwner", testUploadOwner},
	}
	for _, tc := range configured {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore)
		})
	}
	runCollector(t, newStore)
}

var (
	repoA = store.Repo{Registry: "hub", Name: "library/alpine"}
	repoB = store.Repo{Registry: "hub", Name: "library/busybox"}
	// repoC has repoA's name in another registry.
	repoC = store.Repo{Registry: "release", Name: "library/alpine"}
)

// content returns n deterministic bytes derived from seed.
func content(seed string, n int) []byte {
	b := make([]byte, n)
	x := uint32(2166136261)
	for i := 0; i < len(seed); i++ {
		x = (x ^ uint32(seed[i])) * 16777619
	}
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// putBlob stores data in repo and returns its sha256 digest.
func putBlob(t *testing.T, s store.Store, repo store.Repo, data []byte) digest.Digest {
	t.Helper()
	d := digest.SHA256.FromBytes(data)
	if err := s.PutBlob(t.Context(), repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatalf("PutBlob(%s, %s): %v", repo, d, err)
	}
	return d
}

// readBlob opens d in repo and returns its bytes after checking Size.
func readBlob(t *testing.T, s store.Store, repo store.Repo, d digest.Digest) []byte {
	t.Helper()
	b, err := s.OpenBlob(t.Context(), repo, d)
	if err != nil {
		t.Fatalf("OpenBlob(%s, %s): %v", repo, d, err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read blob %s: %v", d, err)
	}
	if b.Size() != int64(len(data)) {
		t.Errorf("blob %s: Size() = %d, read %d bytes", d, b.Size(), len(data))
	}
	return data
}

// newManifest builds an OCI image manifest, unique per name, with an
// optional subject.
func newManifest(t *testing.T, alg digest.Algorithm, name string, subject *ocispec.Descriptor) store.Manifest {
	t.Helper()
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"config": map[string]any{
			"mediaType": "application/vnd.oci.empty.v1+json",
			"digest":    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
			"size":      2,
		},
		"layers":      []any{},
		"annotations": map[string]string{"name": name},
	}
	if subject != nil {
		m["subject"] = subject
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return store.Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: alg.FromBytes(data), Data: data}
}

// putManifest stores m in repo with opts.
func putManifest(t *testing.T, s store.Store, repo store.Repo, m store.Manifest, opts store.PutManifestOptions) {
	t.Helper()
	if err := s.PutManifest(t.Context(), repo, m, opts); err != nil {
		t.Fatalf("PutManifest(%s, %s): %v", repo, m.Digest, err)
	}
}

// wantErr fails unless errors.Is(err, target).
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want %v", what, err, target)
	}
}

// wantNoBlob checks that d is stored nowhere.
func wantNoBlob(t *testing.T, s store.Store, repo store.Repo, d digest.Digest) {
	t.Helper()
	_, err := s.HasBlob(t.Context(), d)
	wantErr(t, fmt.Sprintf("HasBlob(%s)", d), err, store.ErrBlobUnknown)
	_, err = s.StatBlob(t.Context(), repo, d)
	wantErr(t, fmt.Sprintf("StatBlob(%s, %s)", repo, d), err, store.ErrBlobUnknown)
}

// collectRepos lists Repositories(registry) as "registry/name" strings.
func collectRepos(t *testing.T, s store.Store, registry string) []string {
	t.Helper()
	got := []string{}
	err := s.Repositories(t.Context(), registry, func(r store.Repo) error {
		got = append(got, r.String())
		return nil
	})
	if err != nil {
		t.Fatalf("Repositories(%q): %v", registry, err)
	}
	return got
}

// collectBlobs lists Blobs as digest to size.
func collectBlobs(t *testing.T, s store.Store) map[digest.Digest]int64 {
	t.Helper()
	got := map[digest.Digest]int64{}
	err := s.Blobs(t.Context(), func(d digest.Digest, size int64) error {
		got[d] = size
		return nil
	})
	if err != nil {
		t.Fatalf("Blobs: %v", err)
	}
	return got
}
