package cache

import (
	"context"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/store"
)

// TestExpireTags: a delete notification marks connector tags stale, by tag
// or by digest; pushed tags and other digests are left alone, and the next
// pull revalidates within tag_ttl.
func TestExpireTags(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	ctx := context.Background()
	repo := hub("app")
	a := f.up.AddImage("app", "v1", 1000)
	b := f.up.AddImage("app", "v2", 2000)
	f.up.Tag("app", "alias", a.Digest)
	for _, tag := range []string{"v1", "v2", "alias"} {
		if _, err := f.serve().Tag(ctx, repo, tag); err != nil { // pending write-behind
			t.Fatal(err)
		}
	}
	if _, err := f.serve().Manifest(ctx, repo, a.Digest); err != nil {
		t.Fatal(err)
	}
	f.cache.Wait()
	if err := f.store.SetTag(ctx, repo, "mine", store.TagInfo{Digest: a.Digest}); err != nil { // pushed
		t.Fatal(err)
	}
	n, err := f.cache.ExpireTags(ctx, repo, "", a.Digest)
	if err != nil || n != 2 {
		t.Fatalf("expire by digest: %d %v, want v1 and alias", n, err)
	}
	if n, _ := f.cache.ExpireTags(ctx, repo, "", a.Digest); n != 0 {
		t.Errorf("expiring again marked %d", n)
	}
	for tag, stale := range map[string]bool{"v1": true, "alias": true, "v2": false, "mine": false} {
		ti, err := f.store.Tag(ctx, repo, tag)
		if err != nil {
			t.Fatal(err)
		}
		if got := !ti.Checked.After(staleTime); got != stale {
			t.Errorf("%s stale = %v, want %v", tag, got, stale)
		}
	}
	// Within tag_ttl, the stale tag is revalidated and follows upstream.
	f.up.Tag("app", "v1", b.Digest)
	if ti, err := f.serve().Tag(ctx, repo, "v1"); err != nil || ti.Digest != b.Digest {
		t.Fatalf("v1 after expiry: %s %v, want %s", ti.Digest, err, b.Digest)
	}
	// By tag; with the upstream down the stale copy is still served.
	if n, err := f.cache.ExpireTags(ctx, repo, "v2", ""); err != nil || n != 1 {
		t.Fatalf("expire v2: %d %v", n, err)
	}
	f.up.SetDown(true)
	if ti, err := f.serve().Tag(ctx, repo, "v2"); err != nil || ti.Digest != b.Digest {
		t.Fatalf("v2 with the upstream down: %s %v", ti.Digest, err)
	}
	if n, err := f.cache.ExpireTags(ctx, hub("nothing"), "", a.Digest); err != nil || n != 0 {
		t.Errorf("unknown repository: %d %v", n, err)
	}
	if _, err := f.store.Manifest(ctx, repo, a.Digest); err != nil {
		t.Errorf("content removed: %v", err)
	}
}

// TestSupersedePending: a forced revalidation's newer tag replaces a
// pending older one; an older answer never replaces a newer pending one.
func TestSupersedePending(t *testing.T) {
	t.Parallel()
	var p pendingSet
	repo := hub("app")
	now := time.Now()
	a := store.Manifest{Digest: "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}
	p.add(repo, a, store.PutManifestOptions{Tag: "v1"}, store.TagInfo{Digest: a.Digest, Checked: now})
	p.supersede(repo, "v1", store.TagInfo{Digest: "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Checked: now.Add(-time.Second)})
	if _, ok := p.tag(repo, "v1"); !ok {
		t.Fatal("an older answer dropped the pending tag")
	}
	p.supersede(repo, "v1", store.TagInfo{Digest: a.Digest, Checked: now.Add(time.Second)})
	if _, ok := p.tag(repo, "v1"); !ok {
		t.Fatal("a confirmation of the same digest dropped the pending tag")
	}
	p.supersede(repo, "v1", store.TagInfo{Digest: "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Checked: now.Add(time.Second)})
	if _, ok := p.tag(repo, "v1"); ok {
		t.Fatal("the pending older tag is still answered")
	}
}
