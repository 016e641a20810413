package cache

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/metrics"
)

// missLog records the misses the cache would publish.
type missLog struct {
	mu     sync.Mutex
	misses []Miss
}

func (l *missLog) hook(_ context.Context, m Miss) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.misses = append(l.misses, m)
}

func (l *missLog) get() []Miss {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Miss(nil), l.misses...)
}

// TestColdPlatformPullOneMiss pulls one platform of a two-platform image
// cold, then warms the other platform as a worker's job does: only the
// tag's miss is published (one job per image), not the platform manifest's
// nor a blob's, and the background work publishes nothing.
func TestColdPlatformPullOneMiss(t *testing.T) {
	t.Parallel()
	var log missLog
	f := newFixture(t, "", WithMissHook(log.hook))
	ix := f.up.AddIndex("app", "v1", []string{"linux/amd64", "linux/arm64"}, 1000, 200_000)
	ctx := context.Background()
	ti, err := f.serve().Tag(ctx, hub("app"), "v1")
	if err != nil || ti.Digest != ix.Digest {
		t.Fatalf("tag: %v %v", ti.Digest, err)
	}
	amd := ix.Children["linux/amd64"]
	if _, err := f.serve().Manifest(ctx, hub("app"), amd.Digest); err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]digest.Digest{amd.Config}, amd.Layers...) {
		if err := f.readBlob(ctx, hub("app"), d); err != nil {
			t.Fatal(err)
		}
	}
	// The job's walk: the other platform, as background work.
	arm := ix.Children["linux/arm64"]
	if _, err := f.cache.Warming().Manifest(ctx, hub("app"), arm.Digest); err != nil {
		t.Fatal(err)
	}
	for _, d := range ix.Blobs() {
		if _, _, err := f.cache.Warming().Fetch(ctx, hub("app"), d); err != nil {
			t.Fatal(err)
		}
	}
	f.cache.Wait()
	got := log.get()
	if len(got) != 1 || got[0].Kind != metrics.KindManifest || got[0].Reference != "v1" || got[0].Digest != ix.Digest {
		t.Fatalf("published misses %+v, want only the tag's", got)
	}
	// A later pull by digest of an image nothing listed is its own job.
	other := f.up.AddImage("app", "", 100)
	if _, err := f.serve().Manifest(ctx, hub("app"), other.Digest); err != nil {
		t.Fatal(err)
	}
	f.cache.Wait()
	if got := log.get(); len(got) != 2 || got[1].Digest != other.Digest {
		t.Fatalf("published misses %+v, want the tag's and %s", got, other.Digest)
	}
}

// TestBackgroundFetchWaitsForClient holds a client's blob read open and
// checks that a background fetch of another blob does not reach the
// upstream until the client is done and the quiet period has passed.
func TestBackgroundFetchWaitsForClient(t *testing.T) {
	t.Parallel()
	const quiet = 30 * time.Millisecond
	f := newFixture(t, "", WithForeground(quiet, time.Minute))
	img := f.up.AddImage("app", "v1", 1000, 2000)
	ctx := context.Background()
	b, err := f.serve().OpenBlob(ctx, hub("app"), img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := f.cache.Warming().Fetch(ctx, hub("app"), img.Layers[1])
		done <- err
	}()
	// Long enough for an ungated fetch to have gone upstream many times.
	time.Sleep(10 * quiet)
	if n := f.up.Count("GET", "/blobs/"+img.Layers[1].String()); n != 0 {
		t.Fatalf("background fetch went upstream %d times while a client read was open", n)
	}
	released := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(released); waited < quiet {
		t.Fatalf("background fetch started %v after the client, before the quiet period (%v)", waited, quiet)
	}
	if n := f.up.Count("GET", "/blobs/"+img.Layers[1].String()); n != 1 {
		t.Fatalf("background fetch: %d upstream requests, want 1", n)
	}
}

// TestBackgroundFetchGoesAheadAfterMaxWait: a process whose clients never
// pause still warms, one fetch at a time.
func TestBackgroundFetchGoesAheadAfterMaxWait(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "", WithForeground(time.Minute, 50*time.Millisecond))
	img := f.up.AddImage("app", "v1", 1000, 2000)
	ctx := context.Background()
	b, err := f.serve().OpenBlob(ctx, hub("app"), img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, _, err := f.cache.Warming().Fetch(ctx, hub("app"), img.Layers[1]); err != nil {
		t.Fatal(err)
	}
	if n := len(f.cache.prio.slow); n != 0 {
		t.Fatalf("slow slot still held (%d)", n)
	}
}

// TestPullCompleteShortensQuiet follows one platform's cold pull through
// the serving view: while the index's platform manifest or a blob of the
// platform is still to come, background work waits for 3× the quiet
// period; once the last blob was served, for a sixth of it.
func TestPullCompleteShortensQuiet(t *testing.T) {
	t.Parallel()
	const quiet = 600 * time.Millisecond
	f := newFixture(t, "", WithForeground(quiet, time.Minute))
	ix := f.up.AddIndex("app", "v1", []string{"linux/amd64", "linux/arm64"}, 1000, 200_000)
	ctx := context.Background()
	p := f.cache.prio
	quietNow := func() time.Duration {
		_, last, _ := p.clients.snapshot()
		return p.quietFor(time.Now(), last)
	}
	if got := quietNow(); got != quiet {
		t.Fatalf("before any pull: quiet %v, want %v", got, quiet)
	}
	if _, err := f.serve().Tag(ctx, hub("app"), "v1"); err != nil {
		t.Fatal(err)
	}
	if got := quietNow(); got != 3*quiet {
		t.Fatalf("index served, platform not asked yet: quiet %v, want %v", got, 3*quiet)
	}
	amd := ix.Children["linux/amd64"]
	if _, err := f.serve().Manifest(ctx, hub("app"), amd.Digest); err != nil {
		t.Fatal(err)
	}
	blobs := append([]digest.Digest{amd.Config}, amd.Layers...)
	for i, d := range blobs {
		if got := quietNow(); got != 3*quiet {
			t.Fatalf("%d of %d blobs served: quiet %v, want %v", i, len(blobs), got, 3*quiet)
		}
		if err := f.readBlob(ctx, hub("app"), d); err != nil {
			t.Fatal(err)
		}
	}
	if got := quietNow(); got != quiet/6 {
		t.Fatalf("pull complete: quiet %v, want %v", got, quiet/6)
	}
	// Warming starts without waiting the full quiet period.
	start := time.Now()
	arm := ix.Children["linux/arm64"]
	if _, err := f.cache.Warming().Manifest(ctx, hub("app"), arm.Digest); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited >= quiet {
		t.Fatalf("background manifest fetch waited %v after the pull completed (quiet %v)", waited, quiet)
	}
	f.cache.Wait()
}

// TestIncompletePullHoldsBackground: a client between two requests of an
// incomplete pull keeps background work waiting past the plain quiet
// period, and a pull that makes no progress is forgotten after pullTTL.
func TestIncompletePullHoldsBackground(t *testing.T) {
	t.Parallel()
	const quiet = 40 * time.Millisecond
	p := newPriority(quiet, time.Minute)
	repo := hub("app")
	cfg, layer := digest.FromString("config"), digest.FromString("layer")
	p.fetchedManifest(repo, digest.FromString("image"), &manifest.Manifest{
		Config: &ocispec.Descriptor{Digest: cfg}, Layers: []ocispec.Descriptor{{Digest: layer}}})
	p.clients.begin()() // a client miss ended just now
	start := time.Now()
	release, err := p.background(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if waited := time.Since(start); waited < 3*quiet-5*time.Millisecond {
		t.Fatalf("background went ahead after %v, before 3× quiet (%v) with a pull open", waited, 3*quiet)
	}
	p.servedBlob(repo, cfg)
	p.servedBlob(hub("other"), layer) // another repository's blob is not this pull's
	if got := p.quietFor(time.Now(), time.Now()); got != 3*quiet {
		t.Fatalf("one blob left: quiet %v, want %v", got, 3*quiet)
	}
	p.mu.Lock()
	for _, op := range p.pulls {
		op.at = time.Now().Add(-pullTTL)
	}
	p.mu.Unlock()
	if got := p.quietFor(time.Now(), time.Now()); got != quiet {
		t.Fatalf("stale pull: quiet %v, want %v (forgotten)", got, quiet)
	}
}

// TestBackgroundJoinHurriesWriteBehind: a worker's job that needs a blob a
// client just read (verified, held in memory until a pause in client
// traffic) has it stored once clients are quiet, without waiting for the
// write-behind's own pause (writeQuiet).
func TestBackgroundJoinHurriesWriteBehind(t *testing.T) {
	t.Parallel()
	const quiet = 10 * time.Millisecond
	f := newFixture(t, "", WithForeground(quiet, time.Minute))
	img := f.up.AddImage("app", "v1", 20_000)
	ctx := context.Background()
	if err := f.readBlob(ctx, hub("app"), img.Layers[0]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, _, err := f.cache.Warming().Fetch(ctx, hub("app"), img.Layers[0]); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= writeQuiet {
		t.Fatalf("background fetch of a blob pending its write-behind took %v (writeQuiet %v)", took, writeQuiet)
	}
	if _, err := f.store.StatBlob(ctx, hub("app"), img.Layers[0]); err != nil {
		t.Fatalf("blob not stored when the background fetch returned: %v", err)
	}
	if n := f.up.Count("GET", "/blobs/"+img.Layers[0].String()); n != 1 {
		t.Fatalf("%d upstream GETs of the blob, want 1", n)
	}
}
