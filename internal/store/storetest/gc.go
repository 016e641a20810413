package storetest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/store"
)

// runCollector runs the garbage-collection cases when the backend
// implements store.Collector. Each store records every use
// (WithTouchGrain(0)).
func runCollector(t *testing.T, newStore NewStore) {
	if _, ok := newStore(t).(store.Collector); !ok {
		return // not (yet) implemented by this backend
	}
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store, store.Collector)
	}{
		{"CollectLists", testCollectLists},
		{"CollectRemoveBlobCutoff", testCollectRemoveBlobCutoff},
		{"CollectUseProtects", testCollectUseProtects},
		{"CollectRemoveTag", testCollectRemoveTag},
		{"CollectRemoveManifest", testCollectRemoveManifest},
		{"CollectRemoveBlobLink", testCollectRemoveBlobLink},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t, store.WithTouchGrain(0))
			tc.fn(t, s, s.(store.Collector))
		})
	}
}

// after returns a cutoff just after now, once the clock has moved past it.
func after(t *testing.T) time.Time {
	t.Helper()
	time.Sleep(20 * time.Millisecond)
	c := time.Now()
	time.Sleep(20 * time.Millisecond)
	return c
}

func entries(t *testing.T, what string, list func(func(store.Entry) error) error) map[digest.Digest]store.Entry {
	t.Helper()
	got := map[digest.Digest]store.Entry{}
	if err := list(func(e store.Entry) error { got[e.Digest] = e; return nil }); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return got
}

// newManifestWithLayer builds an image manifest whose one layer is d.
func newManifestWithLayer(t *testing.T, d digest.Digest, size int64) store.Manifest {
	t.Helper()
	data, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"config":        map[string]any{"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
		"layers":        []any{map[string]any{"mediaType": ocispec.MediaTypeImageLayer, "digest": d, "size": size}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return store.Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Data: data}
}

func blobLinks(t *testing.T, c store.Collector, repo store.Repo) map[digest.Digest]bool {
	t.Helper()
	got := map[digest.Digest]bool{}
	if err := c.CollectBlobLinks(t.Context(), repo, func(d digest.Digest) error { got[d] = true; return nil }); err != nil {
		t.Fatalf("CollectBlobLinks(%s): %v", repo, err)
	}
	return got
}

func testCollectLists(t *testing.T, s store.Store, c store.Collector) {
	ctx := t.Context()
	start := time.Now().Add(-time.Second)
	b := putBlob(t, s, repoA, content("layer", 300))
	m := newManifest(t, digest.SHA256, "m", nil)
	putManifest(t, s, repoA, m, store.PutManifestOptions{Tag: "v1"})

	blobs := entries(t, "CollectBlobs", func(fn func(store.Entry) error) error { return c.CollectBlobs(ctx, fn) })
	if blobs[b].Size != 300 || blobs[m.Digest].Size != int64(len(m.Data)) {
		t.Errorf("CollectBlobs sizes = %d, %d; want 300, %d", blobs[b].Size, blobs[m.Digest].Size, len(m.Data))
	}
	if blobs[b].LastUsed.Before(start) {
		t.Errorf("CollectBlobs: LastUsed %v before the write at %v", blobs[b].LastUsed, start)
	}
	mans := entries(t, "CollectManifests", func(fn func(store.Entry) error) error { return c.CollectManifests(ctx, repoA, fn) })
	if len(mans) != 1 || mans[m.Digest].Size != int64(len(m.Data)) || mans[m.Digest].LastUsed.Before(start) {
		t.Errorf("CollectManifests = %+v, want only %s of %d bytes", mans, m.Digest, len(m.Data))
	}
	links := blobLinks(t, c, repoA)
	if !links[b] || !links[m.Digest] || len(links) != 2 {
		t.Errorf("CollectBlobLinks = %v, want %s and %s", links, b, m.Digest)
	}
	if other := blobLinks(t, c, repoB); len(other) != 0 {
		t.Errorf("CollectBlobLinks of an empty repository = %v", other)
	}
}

func testCollectRemoveBlobCutoff(t *testing.T, s store.Store, c store.Collector) {
	ctx := t.Context()
	data := content("old", 1000)
	b := putBlob(t, s, repoA, data)
	if _, ok, err := c.RemoveBlob(ctx, b, time.Now().Add(-time.Hour)); err != nil || ok {
		t.Fatalf("RemoveBlob(cutoff an hour ago) = %v, %v; want kept", ok, err)
	}
	readBlob(t, s, repoA, b)
	cutoff := after(t)
	if ok, err := c.RemoveBlobLink(ctx, repoA, b, cutoff); err != nil || !ok {
		t.Fatalf("RemoveBlobLink = %v, %v; want removed", ok, err)
	}
	n, ok, err := c.RemoveBlob(ctx, b, cutoff)
	if err != nil || !ok || n != int64(len(data)) {
		t.Fatalf("RemoveBlob = %d, %v, %v; want %d, removed", n, ok, err, len(data))
	}
	wantNoBlob(t, s, repoA, b)
	if _, ok, err := c.RemoveBlob(ctx, b, cutoff); err != nil || ok {
		t.Errorf("RemoveBlob of a removed blob = %v, %v; want false, nil", ok, err)
	}
	// It can be stored again.
	putBlob(t, s, repoA, data)
	readBlob(t, s, repoA, b)
}

// testCollectUseProtects: a HEAD, a mount, a second write or a tag after
// the cutoff keeps what they used.
func testCollectUseProtects(t *testing.T, s store.Store, c store.Collector) {
	ctx := t.Context()
	uses := []struct {
		name string
		use  func(d digest.Digest) error
	}{
		{"StatBlob", func(d digest.Digest) error { _, err := s.StatBlob(ctx, repoA, d); return err }},
		{"LinkBlob", func(d digest.Digest) error { return s.LinkBlob(ctx, repoB, d) }},
		{"PutBlob", func(d digest.Digest) error { putBlob(t, s, repoB, content("use-PutBlob", 64)); return nil }}, // the same bytes again
		{"PutManifest", func(d digest.Digest) error { // a manifest referencing it
			m := newManifestWithLayer(t, d, 64)
			return s.PutManifest(ctx, repoB, m, store.PutManifestOptions{})
		}},
	}
	for _, u := range uses {
		b := putBlob(t, s, repoA, content("use-"+u.name, 64))
		cutoff := after(t)
		if err := u.use(b); err != nil {
			t.Fatalf("%s: %v", u.name, err)
		}
		if _, ok, err := c.RemoveBlob(ctx, b, cutoff); err != nil || ok {
			t.Errorf("RemoveBlob after %s = %v, %v; want kept", u.name, ok, err)
		}
		if ok, err := c.RemoveBlobLink(ctx, repoA, b, cutoff); err != nil || ok {
			t.Errorf("RemoveBlobLink after %s = %v, %v; want kept", u.name, ok, err)
		}
		readBlob(t, s, repoA, b)
	}

	// Moving a tag away from a manifest is a use of that manifest.
	m1, m2 := newManifest(t, digest.SHA256, "one", nil), newManifest(t, digest.SHA256, "two", nil)
	putManifest(t, s, repoA, m1, store.PutManifestOptions{Tag: "latest"})
	putManifest(t, s, repoA, m2, store.PutManifestOptions{})
	cutoff := after(t)
	if err := s.SetTag(ctx, repoA, "latest", store.TagInfo{Digest: m2.Digest}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{m1.Digest, m2.Digest} {
		if ok, err := c.RemoveManifest(ctx, repoA, d, cutoff); err != nil || ok {
			t.Errorf("RemoveManifest(%s) after the tag moved = %v, %v; want kept", d, ok, err)
		}
		if _, err := s.Manifest(ctx, repoA, d); err != nil {
			t.Errorf("kept manifest: %v", err)
		}
	}
}

func testCollectRemoveTag(t *testing.T, s store.Store, c store.Collector) {
	ctx := t.Context()
	m1, m2 := newManifest(t, digest.SHA256, "one", nil), newManifest(t, digest.SHA256, "two", nil)
	putManifest(t, s, repoA, m1, store.PutManifestOptions{Tag: "v1"})
	putManifest(t, s, repoA, m2, store.PutManifestOptions{})
	if ok, err := c.RemoveTag(ctx, repoA, "v1", m2.Digest); err != nil || ok {
		t.Fatalf("RemoveTag(other digest) = %v, %v; want kept", ok, err)
	}
	if ti, err := s.Tag(ctx, repoA, "v1"); err != nil || ti.Digest != m1.Digest {
		t.Fatalf("Tag after a refused RemoveTag = %v, %v", ti, err)
	}
	if ok, err := c.RemoveTag(ctx, repoA, "v1", m1.Digest); err != nil || !ok {
		t.Fatalf("RemoveTag = %v, %v; want removed", ok, err)
	}
	_, err := s.Tag(ctx, repoA, "v1")
	wantErr(t, "Tag after RemoveTag", err, store.ErrTagUnknown)
	if ok, err := c.RemoveTag(ctx, repoA, "v1", m1.Digest); err != nil || ok {
		t.Errorf("RemoveTag of a removed tag = %v, %v", ok, err)
	}
}

func testCollectRemoveManifest(t *testing.T, s store.Store, c store.Collector) {
	ctx := t.Context()
	subject := newManifest(t, digest.SHA256, "subject", nil)
	putManifest(t, s, repoA, subject, store.PutManifestOptions{Tag: "v1"})
	desc := &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: int64(len(subject.Data))}
	sig := newManifest(t, digest.SHA256, "signature", desc)
	putManifest(t, s, repoA, sig, store.PutManifestOptions{Subject: desc})
	putManifest(t, s, repoB, sig, store.PutManifestOptions{Subject: desc})
	if ok, err := c.RemoveManifest(ctx, repoA, sig.Digest, time.Now().Add(-time.Hour)); err != nil || ok {
		t.Fatalf("RemoveManifest(cutoff an hour ago) = %v, %v; want kept", ok, err)
	}
	cutoff := after(t)
	if ok, err := c.RemoveManifest(ctx, repoA, sig.Digest, cutoff); err != nil || !ok {
		t.Fatalf("RemoveManifest = %v, %v; want removed", ok, err)
	}
	_, err := s.Manifest(ctx, repoA, sig.Digest)
	wantErr(t, "Manifest after RemoveManifest", err, store.ErrManifestUnknown)
	if refs, err := s.Referrers(ctx, repoA, subject.Digest); err != nil || len(refs) != 0 {
		t.Errorf("Referrers after RemoveManifest = %v, %v; want none", refs, err)
	}
	if blobLinks(t, c, repoA)[sig.Digest] {
		t.Errorf("the removed manifest is still linked as a blob")
	}
	// Other repositories and the content are untouched.
	if _, err := s.Manifest(ctx, repoB, sig.Digest); err != nil {
		t.Errorf("Manifest in the other repository: %v", err)
	}
	if _, err := s.HasBlob(ctx, sig.Digest); err != nil {
		t.Errorf("content after RemoveManifest: %v", err)
	}
	if _, err := s.Manifest(ctx, repoA, subject.Digest); err != nil {
		t.Errorf("subject: %v", err)
	}
}

func testCollectRemoveBlobLink(t *testing.T, s store.Store, c store.Collector) {
	ctx := t.Context()
	b := putBlob(t, s, repoA, content("shared", 128))
	if err := s.LinkBlob(ctx, repoB, b); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.RemoveBlobLink(ctx, repoA, b, after(t)); err != nil || !ok {
		t.Fatalf("RemoveBlobLink = %v, %v; want removed", ok, err)
	}
	_, err := s.StatBlob(ctx, repoA, b)
	wantErr(t, "StatBlob after RemoveBlobLink", err, store.ErrBlobUnknown)
	readBlob(t, s, repoB, b)
}
