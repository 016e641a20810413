package cache

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/cache/fill"
	"github.com/regwarm/regwarm/internal/store"
)

// gatedStore holds the cache's writes of fetched content until open is
// closed, counting the writes that waited.
type gatedStore struct {
	*store.FS
	open    chan struct{}
	waiting atomic.Int32
}

func (g *gatedStore) wait(ctx context.Context) error {
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gatedStore) PutVerifiedBlob(ctx context.Context, repo store.Repo, d digest.Digest, data []byte) error {
	if err := g.wait(ctx); err != nil {
		return err
	}
	return g.FS.PutVerifiedBlob(ctx, repo, d, data)
}

func (g *gatedStore) PutManifest(ctx context.Context, repo store.Repo, m store.Manifest, opts store.PutManifestOptions) error {
	if err := g.wait(ctx); err != nil {
		return err
	}
	return g.FS.PutManifest(ctx, repo, m, opts)
}

func newGatedFixture(t *testing.T, opts ...Option) (*fixture, *gatedStore) {
	var g *gatedStore
	f := newWrappedFixture(t, "", func(fs *store.FS) store.Store {
		g = &gatedStore{FS: fs, open: make(chan struct{})}
		return g
	}, opts...)
	return f, g
}

// fakeTimers is an injected clock for the fills' idle watchdogs: a
// watchdog fires only when the test calls expire.
type fakeTimers struct {
	mu     sync.Mutex
	timers []*fakeTimer
}

type fakeTimer struct {
	mu    sync.Mutex
	fn    func()
	armed bool
}

func (ft *fakeTimers) afterFunc(_ time.Duration, fn func()) fill.Timer {
	t := &fakeTimer{fn: fn, armed: true}
	ft.mu.Lock()
	ft.timers = append(ft.timers, t)
	ft.mu.Unlock()
	return t
}

func (t *fakeTimer) Reset(time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.armed
	t.armed = true
	return was
}

func (t *fakeTimer) Stop() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.armed
	t.armed = false
	return was
}

// expire lets every armed watchdog's time run out; it returns how many fired.
func (ft *fakeTimers) expire() int {
	ft.mu.Lock()
	timers := slices.Clone(ft.timers)
	ft.mu.Unlock()
	n := 0
	for _, t := range timers {
		t.mu.Lock()
		armed := t.armed
		t.armed = false
		t.mu.Unlock()
		if armed {
			t.fn()
			n++
		}
	}
	return n
}

// A client's pull is answered from verified bytes while the store cannot
// write yet; the content lands once it can, and nothing is fetched twice.
func TestPullAnsweredBeforeStored(t *testing.T) {
	t.Parallel()
	clock := &fakeTimers{}
	f, g := newGatedFixture(t, WithAfterFunc(clock.afterFunc))
	img := f.up.AddImage("app", "v1", 1<<20, 3000)
	ctx := context.Background()
	if err := f.pull(ctx, hub("app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return g.waiting.Load() > 0 })
	// Held past the idle timeout: that timeout is for a silent upstream,
	// not for a slow store, so no watchdog is armed any more.
	if n := clock.expire(); n != 0 {
		t.Fatalf("%d idle watchdogs armed while only the store is slow", n)
	}
	if _, err := f.store.Tag(ctx, hub("app"), "v1"); err == nil {
		t.Fatal("tag stored while the store was held")
	}
	// A second client meanwhile is served from memory, not from upstream.
	if err := f.pull(ctx, hub("app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(f.m.PendingWrites); n != 4 { // tag's manifest, config, two layers
		t.Fatalf("pending writes %v while the store is held, want 4", n)
	}
	close(g.open)
	f.cache.Wait()
	if n := testutil.ToFloat64(f.m.PendingWrites); n != 0 {
		t.Fatalf("pending writes %v after Wait", n)
	}
	if ti, err := f.store.Tag(ctx, hub("app"), "v1"); err != nil || ti.Digest != img.Digest || ti.Source != "up" {
		t.Fatalf("stored tag %+v, %v", ti, err)
	}
	for _, d := range append([]digest.Digest{img.Config}, img.Layers...) {
		if _, err := f.store.StatBlob(ctx, hub("app"), d); err != nil {
			t.Fatalf("blob %s not stored: %v", d, err)
		}
		if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
			t.Errorf("blob %s fetched %d times", d, n)
		}
	}
	if n := f.up.Count("GET", "/manifests/v1"); n != 1 {
		t.Errorf("manifest fetched %d times", n)
	}
}

// Worker syncs and jobs (the warming view) store before they return.
func TestBackgroundStoresAtOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("app", "v1", 2000)
	ctx := context.Background()
	ti, err := f.cache.Warming().ResolveTag(ctx, hub("app"), "v1", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Manifest(ctx, hub("app"), ti.Digest); err != nil {
		t.Fatalf("manifest not stored on return: %v", err)
	}
	if _, _, err := f.cache.Warming().Fetch(ctx, hub("app"), img.Layers[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.StatBlob(ctx, hub("app"), img.Layers[0]); err != nil {
		t.Fatalf("blob not stored on return: %v", err)
	}
}

// A tag pushed while the fetched one waits to be written wins.
func TestPushedTagWinsOverPendingWrite(t *testing.T) {
	t.Parallel()
	var g *gatedStore
	f := newWrappedFixture(t, `
registries:
  - {name: hub, push: true, connectors: [up], tag_ttl: 1m}
connectors:
  - {name: up, url: "UP"}
`, func(fs *store.FS) store.Store {
		g = &gatedStore{FS: fs, open: make(chan struct{})}
		return g
	})
	ctx := context.Background()
	up := f.up.AddImage("app", "v1", 10)
	if _, err := f.serve().Tag(ctx, hub("app"), "v1"); err != nil {
		t.Fatal(err)
	}
	pushed := f.up.AddImage("other", "x", 20) // some manifest to push
	if err := f.store.PutManifest(ctx, hub("app"), store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json",
		Digest: pushed.Digest, Data: pushed.Manifest}, store.PutManifestOptions{Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	close(g.open)
	f.cache.Wait()
	ti, err := f.store.Tag(ctx, hub("app"), "v1")
	if err != nil || ti.Digest != pushed.Digest || ti.Source != "" {
		t.Fatalf("tag %+v, %v; want the pushed %s (upstream had %s)", ti, err, pushed.Digest, up.Digest)
	}
}

// The config of a manifest fetched for a client is fetched without being
// asked for; layers are not.
func TestConfigReadAhead(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("app", "v1", 5000)
	ctx := context.Background()
	ti, err := f.serve().Tag(ctx, hub("app"), "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.serve().Manifest(ctx, hub("app"), ti.Digest); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.up.Count("GET", "/blobs/"+img.Config.String()) == 1 })
	f.cache.Wait()
	if _, err := f.store.StatBlob(ctx, hub("app"), img.Config); err != nil {
		t.Fatalf("config not stored: %v", err)
	}
	if n := f.up.Count("GET", "/blobs/"+img.Layers[0].String()); n != 0 {
		t.Fatalf("layer fetched ahead %d times", n)
	}
	if err := f.readBlob(ctx, hub("app"), img.Config); err != nil {
		t.Fatal(err)
	}
	if n := f.up.Count("GET", "/blobs/"+img.Config.String()); n != 1 {
		t.Fatalf("config fetched %d times", n)
	}
}

// With the memory budget spent, blobs stream through the store's spool
// file instead, with the same result.
func TestMemoryBudgetFallsBackToSpool(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "", func(c *Cache) error { c.mem = 1 << 20; return nil })
	img := f.up.AddImage("app", "v1", 3<<20, 512<<10, 600<<10)
	if err := f.pull(context.Background(), hub("app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	f.cache.Wait()
	if used := f.cache.fills.MemoryHeld(); used != 0 {
		t.Fatalf("%d bytes of memory still reserved", used)
	}
	for _, d := range append([]digest.Digest{img.Config}, img.Layers...) {
		if _, err := f.store.StatBlob(context.Background(), hub("app"), d); err != nil {
			t.Fatalf("blob %s: %v", d, err)
		}
	}
}

// A forced revalidation of a tag still waiting to be written has it
// written at once instead of waiting for a pause in cold traffic.
func TestForcedResolveWritesPendingTagAtOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("app", "v1", 10)
	ctx := context.Background()
	if _, err := f.serve().Tag(ctx, hub("app"), "v1"); err != nil {
		t.Fatal(err)
	}
	busy := f.cache.active.begin() // a pull still running: no pause comes
	defer busy()
	fctx, cancel := context.WithTimeout(ctx, writeMaxDelay/2)
	defer cancel()
	ti, err := f.cache.Warming().ResolveTag(fctx, hub("app"), "v1", true)
	if err != nil || ti.Digest != img.Digest {
		t.Fatalf("forced resolve: %+v, %v", ti, err)
	}
	if _, err := f.store.Manifest(ctx, hub("app"), img.Digest); err != nil {
		t.Fatalf("pending manifest not written: %v", err)
	}
}
