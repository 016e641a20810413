// Package cache is the pull-through cache: a store.Reader that answers from
// the local store and, on a miss, from the registry's connectors in order,
// storing what it fetched. Concurrent misses for the same content share one
// upstream fetch; a tag whose connectors all fail is served stale.
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

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/trace"
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

	calls inflight[string, *flight[any]] // manifests and tags
	fills inflight[fillKey, *fill]       // blobs, one fill per registry and digest
	mem   budget                         // bytes of blobs streaming through memory

	active   activity       // cold work in progress, for write-behind
	pending  pendingSet     // manifests answered but not stored yet
	flushing atomic.Int32   // Wait in progress: write-behind stores go now
	work     sync.WaitGroup // detached fills and flights in progress

	prio    *priority // client misses in flight hold background fetches back
	covered coverSet  // content a published miss's job will warm
}

var _ store.Reader = (*Cache)(nil)

type registry struct {
	ttl     time.Duration
	push    bool
	sources []connector.Source
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
	// Held reports whether anyone holds key.
	Held(ctx context.Context, key string) (bool, error)
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
			for i, s := range r.sources {
				if rep, ok := sources[s.Name()]; ok {
					r.sources[i] = rep
				}
			}
		}
		return nil
	}
}

// New builds the cache for cfg's registries over st. Connectors with a url
// become regclient upstreams; connectors naming a local registry read that
// registry through this cache.
func New(cfg *config.Config, st store.Store, upstreamOpts []connector.UpstreamOption, opts ...Option) (*Cache, error) {
	c := &Cache{
		store:       st,
		regs:        map[string]*registry{},
		log:         slog.New(slog.DiscardHandler),
		now:         time.Now,
		fillTimeout: time.Hour,
		idleTimeout: time.Minute,
		prio:        newPriority(defaultQuiet, defaultMaxWait),
	}
	sources := map[string]connector.Source{}
	for _, cc := range cfg.Connectors {
		if cc.Registry != "" {
			sources[cc.Name] = connector.NewLocal(cc.Name, cc.Registry,
				connector.Filter{Include: cc.Include, Exclude: cc.Exclude}, c)
			continue
		}
		up, err := connector.NewUpstream(cc, upstreamOpts...)
		if err != nil {
			return nil, err
		}
		sources[cc.Name] = up
	}
	for _, r := range cfg.Registries {
		reg := &registry{ttl: r.TagTTL.D(), push: r.Push}
		for _, name := range r.Connectors {
			s, ok := sources[name]
			if !ok {
				return nil, fmt.Errorf("cache: registry %s: unknown connector %s", r.Name, name)
			}
			reg.sources = append(reg.sources, s)
		}
		c.regs[r.Name] = reg
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.metrics == nil {
		c.metrics = metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	}
	return c, nil
}

// Wait blocks until every detached fill and flight has finished (they
// outlive the requests that started them).
// Content waiting to be stored write-behind is stored at once.
func (c *Cache) Wait() {
	c.flushing.Add(1)
	defer c.flushing.Add(-1)
	c.active.begin()() // wakes write-behind waiters to look again
	c.work.Wait()
}

func (c *Cache) closing() bool { return c.flushing.Load() > 0 }

// Source returns the connector named name, if it is configured.
func (c *Cache) Source(name string) (connector.Source, bool) {
	for _, r := range c.regs {
		for _, s := range r.sources {
			if s.Name() == name {
				return s, true
			}
		}
	}
	return nil, false
}

func (c *Cache) sources(repo store.Repo) []connector.Source {
	r, ok := c.regs[repo.Registry]
	if !ok {
		return nil
	}
	out := make([]connector.Source, 0, len(r.sources))
	for _, s := range r.sources {
		if s.Allowed(repo.Name) {
			out = append(out, s)
		}
	}
	return out
}

type backgroundKey struct{}

// Background marks ctx as background work (worker syncs, scheduled jobs):
// its reads are not counted as client cache requests.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

// count records one cache result per request and kind: a tag resolution
// that fetched (miss) or fell back (stale) is not counted again as a hit
// when the manifest is read next. Background work is not counted.
func (c *Cache) count(ctx context.Context, registry, kind, result string) {
	if ctx.Value(backgroundKey{}) != nil {
		return
	}
	if trace.Once(ctx, "cache-"+kind) {
		c.metrics.CacheRequests.WithLabelValues(registry, kind, result).Inc()
	}
}

func (c *Cache) miss(ctx context.Context, m Miss) {
	if c.onMiss != nil && c.publishMiss(ctx, m) {
		m.RequestID = trace.RequestID(ctx)
		c.onMiss(ctx, m)
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
