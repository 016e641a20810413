package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/cache/fill"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// TestViewsCount: a client request counts one cache result per kind (a
// tag miss is not counted again as a hit when the manifest is read next);
// a new request counts again; the warming view counts nothing.
func TestViewsCount(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("app", "v1", 100)
	ctx := context.Background()
	w := f.cache.Warming()
	if _, err := w.Manifest(ctx, hub("app"), img.Config); err == nil {
		t.Fatal("a config blob read as a manifest")
	}
	if _, _, err := w.Fetch(ctx, hub("app"), img.Layers[0]); err != nil {
		t.Fatal(err)
	}
	for _, res := range []string{metrics.ResultHit, metrics.ResultMiss} {
		if n := f.counter(metrics.KindManifest, res) + f.counter(metrics.KindBlob, res); n != 0 {
			t.Fatalf("warming counted %v %s", n, res)
		}
	}
	req := f.cache.Serving().Request("r1")
	ti, err := req.Tag(ctx, hub("app"), "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := req.Manifest(ctx, hub("app"), ti.Digest); err != nil {
		t.Fatal(err)
	}
	if miss, hit := f.counter(metrics.KindManifest, metrics.ResultMiss), f.counter(metrics.KindManifest, metrics.ResultHit); miss != 1 || hit != 0 {
		t.Fatalf("one request: manifest miss %v hit %v, want 1 and 0", miss, hit)
	}
	if _, err := f.cache.Serving().Request("r2").Manifest(ctx, hub("app"), ti.Digest); err != nil {
		t.Fatal(err)
	}
	if hit := f.counter(metrics.KindManifest, metrics.ResultHit); hit != 1 {
		t.Fatalf("second request: manifest hit %v, want 1", hit)
	}
}

// lookups is the real filesystem store, counting blob lookups.
type lookups struct {
	*store.FS
	has, stat, open atomic.Int32
}

func (s *lookups) HasBlob(ctx context.Context, d digest.Digest) (int64, error) {
	s.has.Add(1)
	return s.FS.HasBlob(ctx, d)
}

func (s *lookups) StatBlob(ctx context.Context, r store.Repo, d digest.Digest) (int64, error) {
	s.stat.Add(1)
	return s.FS.StatBlob(ctx, r, d)
}

func (s *lookups) OpenBlob(ctx context.Context, r store.Repo, d digest.Digest) (store.Blob, error) {
	s.open.Add(1)
	return s.FS.OpenBlob(ctx, r, d)
}

// TestColdBlobMissLooksOnce: a client's cold blob miss looks the blob up
// (the lookup that missed), then the fill looks at the store once (is the
// content stored for another repository?) before the upstream GET; it was
// four lookups.
func TestColdBlobMissLooksOnce(t *testing.T) {
	t.Parallel()
	var st *lookups
	f := newWrappedFixture(t, "", func(fs *store.FS) store.Store { st = &lookups{FS: fs}; return st })
	for _, size := range []int{2000, fill.MemMax + 1} { // through memory, through a spool file
		img := f.up.AddImage(fmt.Sprintf("app%d", size), "v1", size)
		st.has.Store(0)
		st.stat.Store(0)
		st.open.Store(0)
		if err := f.readBlob(context.Background(), hub(fmt.Sprintf("app%d", size)), img.Layers[0]); err != nil {
			t.Fatal(err)
		}
		if has, stat, open := st.has.Load(), st.stat.Load(), st.open.Load(); open != 1 || has != 1 || stat != 0 {
			t.Errorf("size %d: OpenBlob %d, HasBlob %d, StatBlob %d; want 1, 1, 0", size, open, has, stat)
		}
	}
}
