package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/cache/fill"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

type fixture struct {
	t     *testing.T
	up    *upstreamtest.Upstream
	store *store.FS
	cache *Cache
	m     *metrics.Set
	clock *clock
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newFixture builds a cache whose registry "hub" pulls from a fake
// upstream; extra YAML is appended to the config (registries, connectors).
func newFixture(t *testing.T, cfgYAML string, opts ...Option) *fixture {
	t.Helper()
	return newWrappedFixture(t, cfgYAML, nil, opts...)
}

// newWrappedFixture is newFixture with the cache over wrap(store) (when
// wrap is not nil); fixture.store stays the FS underneath.
func newWrappedFixture(t *testing.T, cfgYAML string, wrap func(*store.FS) store.Store, opts ...Option) *fixture {
	t.Helper()
	up := upstreamtest.New(t)
	if cfgYAML == "" {
		cfgYAML = `
registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: 1m}
connectors:
  - {name: up, url: "UP"}
`
	}
	cfg, err := config.Parse([]byte("version: 1\n" + strings.ReplaceAll(cfgYAML, "UP", up.URL)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	clk := &clock{now: time.Now()}
	all := append([]Option{WithMetrics(m), WithClock(clk.Now), WithTimeouts(time.Minute, 500*time.Millisecond)}, opts...)
	var cst store.Store = st
	if wrap != nil {
		cst = wrap(st)
	}
	c, err := New(configOf(t, cfg, connector.WithMetrics(m)), cst, all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Wait)
	return &fixture{t: t, up: up, store: st, cache: c, m: m, clock: clk}
}

// configOf is the cache's part of cfg, built as daemon.CacheConfig builds
// it (daemon imports this package: its few lines are repeated here).
func configOf(t *testing.T, cfg *config.Config, opts ...connector.UpstreamOption) Config {
	t.Helper()
	conns := map[string]Connector{}
	for _, c := range cfg.Connectors {
		cc := Connector{Name: c.Name, Registry: c.Registry, Filter: connector.Filter{Include: c.Include, Exclude: c.Exclude}}
		if c.Registry == "" {
			pass, err := c.Password()
			if err != nil {
				t.Fatal(err)
			}
			cc.Source, err = connector.New(connector.Config{Name: c.Name, URL: c.URL, Host: c.Host, Username: c.Username,
				Password: pass, Filter: cc.Filter, Concurrency: c.Concurrency, AuthHosts: c.AuthHosts}, opts...)
			if err != nil {
				t.Fatal(err)
			}
		}
		conns[c.Name] = cc
	}
	var out Config
	for _, r := range cfg.Registries {
		reg := Registry{Name: r.Name, TagTTL: r.TagTTL.D(), Push: r.Push}
		for _, name := range r.Connectors {
			reg.Connectors = append(reg.Connectors, conns[name])
		}
		out.Registries = append(out.Registries, reg)
	}
	return out
}

var hub = func(name string) store.Repo { return store.Repo{Registry: "hub", Name: name} }

func (f *fixture) counter(kind, result string) float64 {
	return testutil.ToFloat64(f.m.CacheRequests.WithLabelValues("hub", kind, result))
}

// pull resolves tag and reads the manifest and every blob, returning the
// manifest digest.
func (f *fixture) pull(ctx context.Context, repo store.Repo, tag string, img upstreamtest.Image) error {
	ti, err := f.serve().Tag(ctx, repo, tag)
	if err != nil {
		return fmt.Errorf("tag: %w", err)
	}
	m, err := f.serve().Manifest(ctx, repo, ti.Digest)
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if m.Digest != img.Digest || !bytes.Equal(m.Data, img.Manifest) {
		return fmt.Errorf("manifest %s differs from upstream %s", m.Digest, img.Digest)
	}
	for _, d := range append([]digest.Digest{img.Config}, img.Layers...) {
		if err := f.readBlob(ctx, repo, d); err != nil {
			return err
		}
	}
	return nil
}

func (f *fixture) readBlob(ctx context.Context, repo store.Repo, d digest.Digest) error {
	b, err := f.serve().OpenBlob(ctx, repo, d)
	if err != nil {
		return fmt.Errorf("open %s: %w", d, err)
	}
	defer b.Close()
	h := d.Algorithm().Digester()
	n, err := io.Copy(h.Hash(), b)
	if err != nil {
		return fmt.Errorf("read %s: %w", d, err)
	}
	if n != b.Size() || h.Digest() != d {
		return fmt.Errorf("blob %s: read %d bytes hashing to %s", d, n, h.Digest())
	}
	return nil
}

func TestColdWarmAndUpstreamDown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("library/app", "v1", 1<<20, 300<<10)
	ctx := context.Background()
	if err := f.pull(ctx, hub("library/app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	if got := f.counter("blob", "miss"); got != 3 {
		t.Errorf("blob misses %v, want 3", got)
	}
	if got := f.counter("manifest", "miss"); got != 1 {
		t.Errorf("manifest misses %v, want 1", got)
	}
	before := f.up.Total()
	if err := f.pull(ctx, hub("library/app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	if f.up.Total() != before {
		t.Fatalf("warm pull within tag_ttl made %d upstream requests", f.up.Total()-before)
	}
	// After the TTL the tag is revalidated with a HEAD, never a GET.
	f.clock.Advance(2 * time.Minute)
	gets := f.up.Count("GET", "/manifests/v1")
	if err := f.pull(ctx, hub("library/app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	if f.up.Count("HEAD", "/manifests/v1") != 1 || f.up.Count("GET", "/manifests/v1") != gets {
		t.Fatalf("revalidation: HEAD %d GET %d", f.up.Count("HEAD", "/manifests/v1"), f.up.Count("GET", "/manifests/v1"))
	}
	// Upstream down: tag served stale, digests and blobs still local.
	f.up.SetDown(true)
	f.clock.Advance(2 * time.Minute)
	if err := f.pull(ctx, hub("library/app"), "v1", img); err != nil {
		t.Fatalf("pull with upstream down: %v", err)
	}
	if got := f.counter("manifest", "stale"); got != 1 {
		t.Errorf("stale count %v, want 1", got)
	}
	if _, err := f.serve().Manifest(ctx, hub("library/app"), img.Digest); err != nil {
		t.Fatalf("by digest with upstream down: %v", err)
	}
	// Something never cached fails cleanly.
	if _, err := f.serve().Tag(ctx, hub("library/app"), "v2"); err == nil {
		t.Fatal("unknown tag with upstream down succeeded")
	}
}

func TestTagMovesUpstream(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	ctx := context.Background()
	a := f.up.AddImage("app", "latest", 1000)
	if err := f.pull(ctx, hub("app"), "latest", a); err != nil {
		t.Fatal(err)
	}
	b := f.up.AddImage("app", "latest", 2000)
	if err := f.pull(ctx, hub("app"), "latest", a); err != nil {
		t.Fatalf("within TTL the cached digest is served: %v", err)
	}
	f.clock.Advance(2 * time.Minute)
	if err := f.pull(ctx, hub("app"), "latest", b); err != nil {
		t.Fatalf("after TTL the new digest is served: %v", err)
	}
}

func TestConcurrentColdPullsFetchOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("app", "v1", 4<<20, 1<<20, 10)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- f.pull(context.Background(), hub("app"), "v1", img)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range append([]digest.Digest{img.Config}, img.Layers...) {
		if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
			t.Errorf("blob %s fetched %d times, want 1", d, n)
		}
	}
	if n := f.up.Count("GET", "/manifests/v1"); n != 1 {
		t.Errorf("manifest fetched %d times, want 1", n)
	}
	if testutil.ToFloat64(f.m.Coalesced) == 0 {
		t.Error("no coalesced requests counted")
	}
}

func TestClientDisconnectFillCompletes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	data := upstreamtest.RandomGzip(16 << 20)
	d := f.up.AddBlob("app", data)
	ctx, cancel := context.WithCancel(context.Background())
	b, err := f.serve().OpenBlob(ctx, hub("app"), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, b, 1<<20); err != nil {
		t.Fatal(err)
	}
	cancel()
	_ = b.Close()
	waitFor(t, func() bool { _, err := f.store.HasBlob(context.Background(), d); return err == nil })
	if err := f.readBlob(context.Background(), hub("app"), d); err != nil {
		t.Fatal(err)
	}
	if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
		t.Fatalf("fetched %d times", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUpstreamFaults: nothing corrupt or partial is ever stored or served.
func TestUpstreamFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		fault upstreamtest.Fault
	}{
		{"corrupt", upstreamtest.Fault{Corrupt: true}},
		{"truncated", upstreamtest.Fault{Truncate: true}},
		{"server error", upstreamtest.Fault{Status: 500}},
		{"rate limited", upstreamtest.Fault{Status: 429, RetryAfter: "30"}},
		{"slow loris", upstreamtest.Fault{StallAfter: 1000}},
	}
	for _, tt := range tests {
		for _, size := range []int{2 << 20, fill.MemMax + 1} { // through memory, through a spool file
			t.Run(fmt.Sprintf("%s/%d", tt.name, size), func(t *testing.T) {
				t.Parallel()
				upstreamFault(t, tt.name, tt.fault, size)
			})
		}
	}
}

// upstreamFault reads a blob of size bytes through an upstream with
// fault, then again once the upstream is healthy.
func upstreamFault(t *testing.T, name string, fault upstreamtest.Fault, size int) {
	f := newFixture(t, "")
	data := upstreamtest.RandomGzip(size)
	d := f.up.AddBlob("app", data)
	f.up.SetFault(d.String(), fault)
	err := f.readBlob(context.Background(), hub("app"), d)
	if err == nil {
		t.Fatal("read succeeded")
	}
	f.cache.Wait()
	if _, err := f.store.HasBlob(context.Background(), d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Fatalf("store has the blob after a %s upstream: %v", name, err)
	}
	// Once the upstream is healthy the same read works, except while a
	// Retry-After is pending.
	f.up.SetFault(d.String(), upstreamtest.Fault{})
	err = f.readBlob(context.Background(), hub("app"), d)
	if fault.RetryAfter != "" {
		var ce *connector.Error
		if !errors.As(err, &ce) || ce.RetryAfter <= 0 || ce.Status != 429 {
			t.Fatalf("within Retry-After: %v", err)
		}
		if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
			t.Fatalf("upstream asked %d times within Retry-After", n)
		}
		return
	}
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestCorruptManifestRejected(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("app", "v1", 100)
	f.up.SetFault("v1", upstreamtest.Fault{Corrupt: true})
	f.up.SetFault(img.Digest.String(), upstreamtest.Fault{Corrupt: true})
	if _, err := f.serve().Tag(context.Background(), hub("app"), "v1"); err == nil {
		t.Fatal("corrupt manifest by tag accepted")
	}
	if _, err := f.serve().Manifest(context.Background(), hub("app"), img.Digest); err == nil {
		t.Fatal("corrupt manifest by digest accepted")
	}
	if _, err := f.store.HasBlob(context.Background(), img.Digest); err == nil {
		t.Fatal("corrupt manifest stored")
	}
}

func TestConnectorOrderAndFilters(t *testing.T) {
	t.Parallel()
	second := upstreamtest.New(t)
	f := newFixture(t, fmt.Sprintf(`
registries:
  - {name: hub, connectors: [first, second]}
connectors:
  - {name: first, url: "UP", exclude: ["secret/*"]}
  - {name: second, url: %q, exclude: ["secret/*"]}
`, second.URL))
	img := second.AddImage("app", "v1", 1000)
	if err := f.pull(context.Background(), hub("app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	if f.up.Count("GET", "/manifests/v1") != 1 {
		t.Fatal("first connector was not asked first")
	}
	second.AddImage("secret/x", "v1", 10)
	if _, err := f.serve().Tag(context.Background(), hub("secret/x"), "v1"); err == nil {
		t.Fatal("excluded repository served")
	}
	if f.up.Count("GET", "/secret/x/manifests/v1")+second.Count("GET", "/secret/x/manifests/v1") != 0 {
		t.Fatal("excluded repository requested upstream")
	}
}

func TestLocalConnectorChainAndPushWins(t *testing.T) {
	t.Parallel()
	f := newFixture(t, `
registries:
  - {name: hub, connectors: [up], push: true}
  - {name: release, push: true, connectors: [hubc]}
connectors:
  - {name: up, url: "UP"}
  - {name: hubc, registry: hub}
`)
	ctx := context.Background()
	img := f.up.AddImage("team/app", "v1", 5000)
	rel := store.Repo{Registry: "release", Name: "team/app"}
	if err := f.pull(ctx, rel, "v1", img); err != nil {
		t.Fatalf("release -> hub -> upstream: %v", err)
	}
	f.cache.Wait() // what a client fetched is stored write-behind
	if _, err := f.store.Manifest(ctx, hub("team/app"), img.Digest); err != nil {
		t.Fatalf("intermediate registry did not cache: %v", err)
	}
	// A pushed tag wins over the connector's.
	other := f.up.AddImage("team/app", "v2", 10)
	if err := f.store.PutManifest(ctx, rel, store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: img.Digest, Data: img.Manifest},
		store.PutManifestOptions{Tag: "v2"}); err != nil {
		t.Fatal(err)
	}
	ti, err := f.serve().Tag(ctx, rel, "v2")
	if err != nil || ti.Digest != img.Digest {
		t.Fatalf("pushed tag: %v %s (upstream has %s)", err, ti.Digest, other.Digest)
	}
}

// A layer two repositories share is fetched once; a caller from the other
// repository joins that fill and gets the blob linked into its own
// repository too — once a connector confirms that repository has it.
func TestSharedLayerAcrossRepositories(t *testing.T) {
	t.Parallel()
	// A generous idle timeout: this test is about linking, and a loaded CI
	// machine once stalled the paced upstream past the fixture's 500 ms.
	f := newFixture(t, "", WithTimeouts(time.Minute, 10*time.Second))
	layer := upstreamtest.RandomGzip(2 << 20)
	d := f.up.AddBlob("a", layer)
	f.up.AddBlob("b", layer)
	f.up.AddBlob("e", layer)
	f.up.SetRate(8 << 20) // 0.25 s: the others join while it runs

	leader := make(chan error, 1)
	go func() { _, _, err := f.cache.Warming().Fetch(context.Background(), hub("a"), d); leader <- err }()
	for f.up.Count("GET", "/blobs/"+d.String()) == 0 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Go(func() { // a worker sync of another image with the same layer
		if _, _, err := f.cache.Warming().Fetch(context.Background(), hub("b"), d); err != nil {
			errs <- fmt.Errorf("fetch in b: %w", err)
		}
	})
	wg.Go(func() { // a client pulling another image with the same layer
		if err := f.readBlob(context.Background(), hub("e"), d); err != nil {
			errs <- fmt.Errorf("read in e: %w", err)
		}
	})
	wg.Go(func() { // a repository whose upstream lacks it gets nothing
		if b, err := f.serve().OpenBlob(context.Background(), hub("c"), d); err == nil {
			b.Close()
			errs <- errors.New("blob served in a repository that does not have it upstream")
		} else if !errors.Is(err, store.ErrBlobUnknown) {
			errs <- fmt.Errorf("open in c: %v, want blob unknown", err)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := <-leader; err != nil {
		t.Fatalf("fetch in a: %v", err)
	}
	f.cache.Wait()
	for _, repo := range []string{"a", "b", "e"} {
		if _, err := f.store.StatBlob(context.Background(), hub(repo), d); err != nil {
			t.Errorf("not linked in %s: %v", repo, err)
		}
	}
	if _, err := f.store.StatBlob(context.Background(), hub("c"), d); err == nil {
		t.Error("linked in c, whose upstream does not have it")
	}
	if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
		t.Errorf("blob fetched %d times, want 1", n)
	}
}

// serve returns the reads of a new client request (the registry API makes
// one per HTTP request).
func (f *fixture) serve() *view { return f.cache.Serving().Request("").(*view) }
