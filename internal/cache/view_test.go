package cache

import (
	"context"
	"testing"

	"github.com/regwarm/regwarm/internal/metrics"
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
