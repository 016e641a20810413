package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regwarm/regwarm/internal/cache/fill"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// Miss describes a cache miss, for the event published by serve.
type Miss struct {
	Registry   string
	Repository string
	Reference  string // the tag or digest asked for
	Digest     digest.Digest
	Kind       string // metrics.KindManifest or metrics.KindBlob
	Connector  string
	RequestID  string
}

// Cache is the pull-through cache over a store.
type Cache struct {
	store   store.Store
	regs    map[string]*registry
	log     *slog.Logger
	metrics *metrics.Set
	onMiss  func(context.Context, Miss)
	leases  Leaser
	now     func() time.Time

	fillTimeout time.Duration
	idleTimeout time.Duration
	afterFunc   func(d time.Duration, fn func()) fill.Timer // nil: time.AfterFunc

	calls inflight[string, *flight[any]] // manifests and tags
	fills *fill.Engine                   // blobs, one fill per registry and digest
	mem   int64                          // memory budget of fills (0: the engine's default)

	active   activity       // cold work in progress, for write-behind
	pending  pendingSet     // manifests answered but not stored yet
	flushing atomic.Int32   // Wait in progress: write-behind stores go now
	hurry    atomic.Int32   // background work waits for a client's fill: write-behind stores go now
	work     sync.WaitGroup // detached flights and links in progress

	prio    *priority // client misses in flight hold background fetches back
	covered coverSet  // content a published miss's job will warm

	serving view     // client reads, uncounted (local connectors read through it)
	warming *Warming // background reads
}

// registry is one configured registry. Its connectors come in two sets
// that differ only in their local connectors: those read the other
// registry through the serving or the warming view, so a chain keeps the
// mode of the read that started it.
type registry struct {
	ttl     time.Duration
	push    bool
	serving []connector.Source
	warming []connector.Source
}

// Option configures a Cache.
type Option func(*Cache) error

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option {
	return func(c *Cache) error {
		if l == nil {
			return errors.New("cache: nil logger")
		}
		c.log = l
		return nil
	}
}

// WithMetrics records cache and upstream metrics in m.
func WithMetrics(m *metrics.Set) Option {
	return func(c *Cache) error {
		if m == nil {
			return errors.New("cache: nil metrics")
		}
		c.metrics = m
		return nil
	}
}

// WithMissHook calls fn (which must not block) on every miss.
func WithMissHook(fn func(context.Context, Miss)) Option {
	return func(c *Cache) error { c.onMiss = fn; return nil }
}

// Leaser grants cross-process leases (NATS KV in regwarm): with one, a
// blob is fetched from upstream once across every process.
type Leaser interface {
	// Acquire takes key; ok is false when another process holds it.
	Acquire(ctx context.Context, key string) (release func(), ok bool, err error)
	// Released blocks until nobody holds key (released, or never held) or
	// ctx ends, returning ctx's error then. A lease that lapses with a
	// dead holder may go unannounced: the fill engine looks again now and
	// then.
	Released(ctx context.Context, key string) error
}

// WithLeases coordinates blob fetches with other processes through l.
func WithLeases(l Leaser) Option {
	return func(c *Cache) error { c.leases = l; return nil }
}

// WithClock sets the clock used for tag freshness.
func WithClock(now func() time.Time) Option {
	return func(c *Cache) error {
		if now == nil {
			return errors.New("cache: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithAfterFunc replaces time.AfterFunc for the fills' idle watchdogs
// (tests inject a clock).
func WithAfterFunc(f func(d time.Duration, fn func()) fill.Timer) Option {
	return func(c *Cache) error {
		if f == nil {
			return errors.New("cache: nil AfterFunc")
		}
		c.afterFunc = f
		return nil
	}
}

// WithTimeouts bounds a detached upstream fill (total) and the time it may
// go without receiving a byte (idle); zero keeps a default.
func WithTimeouts(total, idle time.Duration) Option {
	return func(c *Cache) error {
		if total < 0 || idle < 0 {
			return errors.New("cache: negative timeout")
		}
		if total > 0 {
			c.fillTimeout = total
		}
		if idle > 0 {
			c.idleTimeout = idle
		}
		return nil
	}
}

// WithSources replaces the connectors built from the config (tests).
func WithSources(sources map[string]connector.Source) Option {
	return func(c *Cache) error {
		for _, r := range c.regs {
			for _, set := range [][]connector.Source{r.serving, r.warming} {
				for i, s := range set {
					if rep, ok := sources[s.Name()]; ok {
						set[i] = rep
					}
				}
			}
		}
		return nil
	}
}

// Config is what the cache needs of regwarm's configuration: the
// registries it serves.
type Config struct {
	Registries []Registry
}

// Registry is one registry the cache serves.
type Registry struct {
	Name       string
	TagTTL     time.Duration // how long a tag checked upstream stays fresh; 0: always revalidate
	Push       bool          // clients push to it: blobs stored in it are served without a connector
	Connectors []Connector   // tried in order
}

// Connector is one source of a registry: an upstream connector, or (Source
// nil) the local registry Registry, read through this cache for the
// repositories Filter allows. A connector listed by several registries is
// shared when it has the same Name.
type Connector struct {
	Name     string
	Source   connector.Source
	Registry string
	Filter   connector.Filter
}

// New builds the cache for cfg's registries over st. Local connectors
// read their registry through this cache.
func New(cfg Config, st store.Store, opts ...Option) (*Cache, error) {
	c := &Cache{
		store:       st,
		regs:        map[string]*registry{},
		log:         slog.New(slog.DiscardHandler),
		now:         time.Now,
		fillTimeout: time.Hour,
		idleTimeout: time.Minute,
		prio:        newPriority(defaultQuiet, defaultMaxWait),
	}
	c.serving = view{c: c, m: mode{client: true}}
	c.warming = &Warming{view{c: c}}
	if err := c.addRegistries(cfg); err != nil {
		return nil, err
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.metrics == nil {
		c.metrics = metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	}
	var err error
	c.fills, err = fill.New(st, fill.Config{Leases: c.leases, Log: c.log, Timeout: c.fillTimeout,
		Idle: c.idleTimeout, AfterFunc: c.afterFunc, Memory: c.mem, Busy: c.active.begin, Later: c.later,
		Written: func(err error) { c.metrics.StoreWrites.WithLabelValues(resultOf(err)).Inc() }})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// addRegistries adds cfg's registries. A local connector is built once
// per view: it reads its registry through the serving or warming view.
func (c *Cache) addRegistries(cfg Config) error {
	serving, warming := map[string]connector.Source{}, map[string]connector.Source{}
	for _, r := range cfg.Registries {
		if r.Name == "" {
			return errors.New("cache: registry without a name")
		}
		if _, dup := c.regs[r.Name]; dup {
			return fmt.Errorf("cache: registry %s listed twice", r.Name)
		}
		if r.TagTTL < 0 {
			return fmt.Errorf("cache: registry %s: negative tag ttl", r.Name)
		}
		reg := &registry{ttl: r.TagTTL, push: r.Push}
		for _, cc := range r.Connectors {
			if _, ok := serving[cc.Name]; !ok {
				switch {
				case cc.Source != nil:
					serving[cc.Name], warming[cc.Name] = cc.Source, cc.Source
				case cc.Registry != "":
					serving[cc.Name] = connector.NewLocal(cc.Name, cc.Registry, cc.Filter, &c.serving)
					warming[cc.Name] = connector.NewLocal(cc.Name, cc.Registry, cc.Filter, c.warming)
				default:
					return fmt.Errorf("cache: registry %s: connector %q has neither a source nor a registry", r.Name, cc.Name)
				}
			}
			reg.serving = append(reg.serving, serving[cc.Name])
			reg.warming = append(reg.warming, warming[cc.Name])
		}
		c.regs[r.Name] = reg
	}
	return nil
}

// Wait blocks until every detached fill and flight has finished (they
// outlive the requests that started them).
// Content waiting to be stored write-behind is stored at once.
func (c *Cache) Wait() {
	c.flushing.Add(1)
	defer c.flushing.Add(-1)
	c.active.begin()() // wakes write-behind waiters to look again
	c.work.Wait()
	c.fills.Wait()
	c.work.Wait() // links of what the fills stored
}

func (c *Cache) closing() bool { return c.flushing.Load() > 0 }

// sources returns the connectors of repo's registry that may serve repo,
// in order, as the mode reads them.
func (c *Cache) sources(m mode, repo store.Repo) []connector.Source {
	r, ok := c.regs[repo.Registry]
	if !ok {
		return nil
	}
	set := r.warming
	if m.client {
		set = r.serving
	}
	out := make([]connector.Source, 0, len(set))
	for _, s := range set {
		if s.Allowed(repo.Name) {
			out = append(out, s)
		}
	}
	return out
}

// count records a client request's cache result, once per request and
// kind (m's tally): a tag resolution that fetched (miss) or fell back
// (stale) is not counted again as a hit when the manifest is read next.
// Reads without a tally (background work, a local connector's hop) are not
// counted.
func (c *Cache) count(m mode, registry, kind, result string) {
	if m.tally.first(kind) {
		c.metrics.CacheRequests.WithLabelValues(registry, kind, result).Inc()
	}
}

// miss reports a miss to the hook, when m publishes it (publishMiss).
func (c *Cache) miss(ctx context.Context, m mode, ms Miss) {
	if c.onMiss != nil && c.publishMiss(m, ms) {
		ms.RequestID = m.requestID
		c.onMiss(ctx, ms)
	}
}

// detached returns a context for a shared fill: not cancelled with the
// request that started it, bounded by the fill timeout, carrying the
// request id for logs.
func (c *Cache) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), c.fillTimeout)
}

// shared runs fn once per key among concurrent callers, detached from any
// caller; each caller waits with its own ctx and sees fn's result.
func (c *Cache) shared(ctx context.Context, key string, fn func(ctx context.Context) (any, error)) (any, error) {
	call, leader := c.calls.join(key, func() *flight[any] {
		f := newFlight[any]()
		c.work.Add(1)
		go func() {
			defer c.work.Done()
			fctx, cancel := c.detached(ctx)
			defer cancel()
			v, err := fn(fctx)
			// Forget first: a caller arriving after the result must not
			// get this (possibly outdated) one, it starts afresh.
			c.calls.forget(key, f)
			f.finish(v, err)
		}()
		return f
	})
	if !leader {
		c.metrics.Coalesced.Inc()
	}
	return call.wait(ctx)
}
