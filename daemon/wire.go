package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/pull"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/webhook"
	"github.com/regwarm/regwarm/jobs"
	"github.com/regwarm/regwarm/registryapi"
)

// This file is where the config meets the packages: each package declares
// the small options it needs, and wire builds a process from cfg.

// Runtime layers of a process, stopped from the last to the first (see
// runLayers): the API and the workers stop first, then the pull recorder
// that the API feeds, then the detached upstream fills, and last the
// NATS bus, the miss publisher and the admin endpoint.
const (
	layerBus = iota
	layerFills
	layerPulls
	layerFront
	layers
)

// process is a wired process: its runtimes by layer, its health, and what
// to release when it ends (in reverse order).
type process struct {
	layers  [layers][]Runtime
	health  *Health
	release []func()
}

func (p *process) add(layer int, r ...Runtime) { p.layers[layer] = append(p.layers[layer], r...) }

// close releases what the process holds, the last acquired first.
func (p *process) close() {
	for i := len(p.release) - 1; i >= 0; i-- {
		p.release[i]()
	}
}

// wire builds the process of mode from cfg: store, NATS, cache, API,
// worker, scheduler and their helpers, with every listener bound (so a
// port clash fails here, before anything runs).
func wire(ctx context.Context, cfg *config.Config, mode Mode, log *slog.Logger) (_ *process, err error) {
	p := &process{health: &Health{}}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg, labels(cfg))
	if mode == ModeRun {
		// One `regwarm run` per data_dir (and embedded NATS store).
		locks, err := lockRun(cfg)
		if err != nil {
			return nil, err
		}
		for _, l := range locks {
			p.release = append(p.release, l.unlock)
		}
	}
	st, err := OpenStore(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	b, err := wireBus(p, cfg, mode, log)
	if err != nil {
		return nil, err
	}

	cacheOpts := []cache.Option{cache.WithLogger(log), cache.WithMetrics(m)}
	if b != nil {
		cacheOpts = append(cacheOpts, cache.WithLeases(b))
		if mode != ModeWorker {
			pub := events.NewPublisher(b.js, b.subj, log, m, events.DefaultBuffer)
			cacheOpts = append(cacheOpts, cache.WithMissHook(missHook(pub)))
			p.add(layerBus, runFunc(func(ctx context.Context) error { pub.Run(ctx); return nil }))
		}
	}
	cc, err := CacheConfig(cfg, connector.WithMetrics(m), connector.WithLogger(log), connector.WithUserAgent("regwarm/"+Version))
	if err != nil {
		return nil, err
	}
	c, err := cache.New(cc, st, cacheOpts...)
	if err != nil {
		return nil, err
	}
	p.add(layerFills, fillsDrain(c, log))

	servers := []*httpServer{{name: "metrics", addr: cfg.Metrics.Listen, log: log,
		srv: &http.Server{Handler: adminHandler(reg, p.health), ReadHeaderTimeout: 10 * time.Second}}}
	if mode == ModeRun || mode == ModeServe {
		api, err := wireAPI(p, cfg, st, c, b, m, log)
		if err != nil {
			return nil, err
		}
		servers = append(servers, api)
		j := &uploadJanitor{store: st, expiry: cfg.Serve.UploadExpiry.D(), now: time.Now, log: log, metrics: m}
		p.add(layerFront, j)
	}
	var early *earlyGC // workers: gc before its schedule
	if mode == ModeRun || mode == ModeWorker {
		early = wireWorker(p, cfg, st, c, b, m, log, mode)
	}
	if mode != ModeServe {
		p.add(layerFront, runFunc(func(ctx context.Context) error { storeStats(ctx, st, m, log); return nil }),
			runFunc(func(ctx context.Context) error {
				registryStats(ctx, cfg, st, m, log, cfg.Jobs.GC.CheckEvery.D(), early)
				return nil
			}))
	}
	for _, s := range servers {
		if err := s.listen(); err != nil {
			return nil, err
		}
		p.release = append(p.release, s.close)
		log.Info("listening", "server", s.name, "addr", s.ln.Addr().String())
	}
	p.add(layerBus, servers[0]) // the admin endpoint answers until the end
	for _, s := range servers[1:] {
		p.add(layerFront, s)
	}
	return p, nil
}

// wireBus starts the embedded NATS server of `regwarm run` (without
// nats.url) and connects the process's bus; nil without NATS.
func wireBus(p *process, cfg *config.Config, mode Mode, log *slog.Logger) (*bus, error) {
	natsURL := cfg.NATS.URL
	var natsAuth []nats.Option
	if mode == ModeRun && natsURL == "" {
		ns, url, auth, err := StartEmbeddedNATS(cfg, log)
		if err != nil {
			return nil, err
		}
		p.release = append(p.release, ns.Shutdown)
		natsURL = url
		natsAuth = append(natsAuth, auth)
		log.Info("embedded nats started", "url", url, "store_dir", cfg.NATSStoreDir())
	}
	if mode == ModeWorker && natsURL == "" {
		return nil, errors.New("the worker needs NATS: set nats.url or --nats-url")
	}
	if natsURL == "" {
		log.Warn("no nats.url: cache misses are not published and no worker warms images")
		return nil, nil
	}
	host, _ := os.Hostname()
	owner := fmt.Sprintf("%s/%s/%d", mode, host, os.Getpid())
	b, err := newBus(natsURL, natsConnAuth(cfg.NATS), natsSetup(cfg), "regwarm "+owner, log, natsAuth...)
	if err != nil {
		return nil, err
	}
	p.release = append(p.release, b.close)
	p.add(layerBus, runFunc(func(ctx context.Context) error { b.run(ctx, owner); return nil }))
	return b, nil
}

// wireAPI builds the registry API server (with webhooks and the pull
// recorder) over the cache.
func wireAPI(p *process, cfg *config.Config, st store.Store, c *cache.Cache, b *bus, m *metrics.Set, log *slog.Logger) (*httpServer, error) {
	rec, err := newPullRecorder(st, m, log)
	if err != nil {
		return nil, err
	}
	if rec != nil {
		p.add(layerPulls, runFunc(func(ctx context.Context) error { rec.Run(ctx); return nil }))
	}
	apiOpts := apiOptions(c, rec, log, m)
	if o := redirectOption(cfg, st); o != nil {
		apiOpts = append(apiOpts, o)
	}
	api, err := registryapi.New(apiConfig(cfg), st, apiOpts...)
	if err != nil {
		return nil, err
	}
	var handler http.Handler = api
	if len(cfg.Webhooks) > 0 {
		var q webhook.Queue
		if b != nil {
			q = webhookQueue{js: b.js, subject: b.subj.Sync()}
		}
		handler = withWebhooks(api, webhook.New(webhookHooks(cfg), q, webhook.WithLogger(log), webhook.WithMetrics(m), webhook.WithTags(c)))
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: cfg.Serve.HeaderTimeout.D(), IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	return &httpServer{name: "api", addr: cfg.Serve.Listen, srv: srv, log: log,
		certFile: cfg.Serve.TLS.CertFile, keyFile: cfg.Serve.TLS.KeyFile,
		wrap: func(ln net.Listener) net.Listener {
			return registryapi.LimitListener(ln, cfg.Serve.MaxConnections, cfg.Serve.MaxConnectionsPerClient,
				cfg.Serve.TLS.CertFile == "", m)
		}}, nil
}

// wireWorker adds the worker, its scheduler and its readiness on NATS; it
// returns the trigger of early gc runs.
func wireWorker(p *process, cfg *config.Config, st store.Store, c *cache.Cache, b *bus, m *metrics.Set, log *slog.Logger, mode Mode) *earlyGC {
	syncer := jobs.NewSyncer(cfg, c)
	w := &Worker{conf: cfg.Worker, bus: b, syncer: syncer, log: log, metrics: m}
	if mode == ModeWorker {
		w.missDelay = missSettle // serve's pulls go first (docs/foreground.md)
	}
	repair := func(ctx context.Context, image string) error {
		_, err := b.js.Publish(ctx, b.subj.Sync(), []byte(image))
		return err
	}
	sch := &scheduler{specs: schedules(cfg), reports: cfg.ReportsDir(), bus: b, jobs: jobFuncs(cfg, st, c, syncer, log, repair), log: log, metrics: m,
		owner: fmt.Sprintf("%s/%d", mode, os.Getpid()), now: time.Now, running: map[string]bool{},
		dryRuns: map[string]JobFunc{jobs.JobGC: func(ctx context.Context) (*jobs.Report, error) {
			return runGC(ctx, cfg, st, log, jobs.WithGCDryRun(true))
		}}}
	p.health.SetProblem("nats", "not set up yet")
	p.add(layerBus, runFunc(func(ctx context.Context) error {
		select {
		case <-b.ready:
			p.health.SetProblem("nats", "")
		case <-ctx.Done():
		}
		return nil
	}))
	p.add(layerFront, w, sch)
	return &earlyGC{sch: sch}
}

// fillsDrain waits, once the process stops, for detached upstream fills
// to finish what clients already received (up to ShutdownTimeout).
func fillsDrain(c *cache.Cache, log *slog.Logger) Runtime {
	return runFunc(func(ctx context.Context) error {
		<-ctx.Done()
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		t := time.NewTimer(ShutdownTimeout)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			log.Warn("upstream fills still running at shutdown; their temporary files are discarded")
		}
		return nil
	})
}

// CacheConfig is the cache's part of cfg: its registries with their
// connectors, upstream ones built with opts (each once, shared by the
// registries that list it). Tests outside daemon wire caches with it too.
func CacheConfig(cfg *config.Config, opts ...connector.UpstreamOption) (cache.Config, error) {
	conns := map[string]cache.Connector{}
	for _, c := range cfg.Connectors {
		cc := cache.Connector{Name: c.Name, Registry: c.Registry, Filter: connector.Filter{Include: c.Include, Exclude: c.Exclude}}
		if c.Registry == "" {
			uc, err := upstreamConfig(c)
			if err != nil {
				return cache.Config{}, err
			}
			if cc.Source, err = connector.New(uc, opts...); err != nil {
				return cache.Config{}, err
			}
		}
		conns[c.Name] = cc
	}
	var out cache.Config
	for _, r := range cfg.Registries {
		reg := cache.Registry{Name: r.Name, TagTTL: r.TagTTL.D(), Push: r.Push}
		for _, name := range r.Connectors {
			cc, ok := conns[name]
			if !ok {
				return cache.Config{}, fmt.Errorf("registry %s: unknown connector %s", r.Name, name)
			}
			reg.Connectors = append(reg.Connectors, cc)
		}
		out.Registries = append(out.Registries, reg)
	}
	return out, nil
}

// upstreamConfig is the settings of upstream connector c, its password
// read (password_env or password_file).
func upstreamConfig(c config.Connector) (connector.Config, error) {
	pass, err := c.Password()
	if err != nil {
		return connector.Config{}, err
	}
	return connector.Config{Name: c.Name, URL: c.URL, Host: c.Host, Username: c.Username, Password: pass,
		Filter: connector.Filter{Include: c.Include, Exclude: c.Exclude}, Concurrency: c.Concurrency, AuthHosts: c.AuthHosts}, nil
}

// RunJob runs job (a scan, verification or gc) once in this process,
// against the store and connectors of cfg, and returns its report. A gc
// holds the job's cluster lease while NATS answers (withClusterLease);
// the other jobs run without NATS.
func RunJob(ctx context.Context, cfg *config.Config, job string, log *slog.Logger) (*jobs.Report, error) {
	st, err := OpenStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	m := metrics.New(prometheus.NewRegistry(), labels(cfg))
	cc, err := CacheConfig(cfg, connector.WithMetrics(m), connector.WithLogger(log))
	if err != nil {
		return nil, err
	}
	c, err := cache.New(cc, st, cache.WithLogger(log), cache.WithMetrics(m))
	if err != nil {
		return nil, err
	}
	fn := jobFuncs(cfg, st, c, jobs.NewSyncer(cfg, c), log, nil)[job]
	if fn == nil {
		return nil, fmt.Errorf("unknown job %q", job)
	}
	if job == jobs.JobGC {
		return withClusterLease(ctx, cfg, job, log, fn)
	}
	return fn(ctx)
}

// jobFuncs builds the scheduled jobs over a store and cache (refresh syncs
// with syncer). repair, when not nil, queues a sync for what the dangling
// scan finds fixable.
func jobFuncs(cfg *config.Config, st store.Store, c *cache.Cache, syncer *jobs.Syncer, log *slog.Logger, repair func(context.Context, string) error) map[string]JobFunc {
	return map[string]JobFunc{
		jobs.JobDanglingScan: func(ctx context.Context) (*jobs.Report, error) {
			var opts []jobs.ScanOption
			if cfg.Jobs.DanglingScan.Repair && repair != nil {
				opts = append(opts, jobs.WithRepair(repair))
			}
			return jobs.NewScanner(cfg, st, c.Warming().Source, log, opts...).Run(ctx)
		},
		jobs.JobVerify: func(ctx context.Context) (*jobs.Report, error) {
			fetch := func(ctx context.Context, repo store.Repo, d digest.Digest) error {
				_, _, err := c.Warming().Fetch(ctx, repo, d)
				return err
			}
			fetchManifest := func(ctx context.Context, repo store.Repo, d digest.Digest) error {
				_, err := c.Warming().Manifest(ctx, repo, d)
				return err
			}
			return jobs.NewVerifier(cfg, st, fetch, log, jobs.WithManifestFetch(fetchManifest),
				jobs.WithUpstreamCheck(jobs.ConnectorCheck(cfg, c.Warming().Source)),
				jobs.WithBytesPerSecond(cfg.Jobs.Verify.MaxBytesPerSecond), jobs.WithRepairAbsent(cfg.Jobs.Verify.Repair)).Run(ctx)
		},
		jobs.JobRefresh: func(ctx context.Context) (*jobs.Report, error) {
			return jobs.NewRefresher(syncer, cfg.Jobs.Refresh.Images, log).Run(ctx)
		},
		jobs.JobGC: func(ctx context.Context) (*jobs.Report, error) {
			return runGC(ctx, cfg, st, log)
		},
	}
}

// runGC runs retention and garbage collection once; free space below the
// disk watermark asks it to evict the difference.
func runGC(ctx context.Context, cfg *config.Config, st store.Store, log *slog.Logger, opts ...jobs.GCOption) (*jobs.Report, error) {
	if w := int64(cfg.Jobs.GC.DiskWatermark); w > 0 {
		if free, err := freeBytes(cfg.StoreRoot()); err == nil && free < w {
			opts = append(opts, jobs.WithGCFree(w-free))
		}
	}
	g, err := jobs.NewGC(cfg, st, log, opts...)
	if err != nil {
		return nil, err
	}
	return g.Run(ctx)
}

// recordGC counts a gc report's removals in the metrics (nothing for a
// dry run).
func recordGC(m *metrics.Set, rep *jobs.Report) {
	if rep == nil || rep.Job != jobs.JobGC || rep.DryRun || rep.GC == nil {
		return
	}
	for _, e := range rep.Removed {
		m.GCRemoved.WithLabelValues(e.Registry, e.Kind(), e.Reason).Inc()
	}
	m.GCFreed.Add(float64(rep.GC.BytesFreed))
}

// labels lists the label values known from the config.
func labels(cfg *config.Config) metrics.Labels {
	var l metrics.Labels
	l.Budgets = map[string]int64{}
	for _, r := range cfg.Registries {
		l.Registries = append(l.Registries, r.Name)
		if r.Retention != nil {
			l.Budgets[r.Name] = int64(r.Retention.MaxBytes)
		}
	}
	for _, c := range cfg.Connectors {
		l.Connectors = append(l.Connectors, c.Name)
	}
	for _, w := range cfg.Webhooks {
		l.Webhooks = append(l.Webhooks, w.Name)
	}
	return l
}

// lockRun locks data_dir and, when it lies outside, the embedded NATS
// store (only used without nats.url).
func lockRun(cfg *config.Config) ([]*dirLock, error) {
	l, err := lockDir(cfg.DataDir, "data_dir")
	if err != nil {
		return nil, err
	}
	locks := []*dirLock{l}
	storeDir := cfg.NATSStoreDir()
	if rel, rerr := filepath.Rel(cfg.DataDir, storeDir); cfg.NATS.URL == "" && (rerr != nil || strings.HasPrefix(rel, "..")) {
		l, err := lockDir(storeDir, "nats.embedded.store_dir")
		if err != nil {
			locks[0].unlock()
			return nil, err
		}
		locks = append(locks, l)
	}
	return locks, nil
}

// OpenStore creates data_dir readable by regwarm's user only (when it does
// not exist yet) and opens the configured store: S3 (with its local spool
// under data_dir) or the filesystem with the configured modes.
func OpenStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if s3 := cfg.Storage.S3; s3 != nil {
		id, secret := s3.Credentials()
		return store.NewS3(ctx, store.S3Options{
			Bucket: s3.Bucket, Prefix: s3.Prefix, Region: s3.Region, Endpoint: s3.Endpoint, PathStyle: s3.PathStyle,
			AccessKeyID: id, SecretAccessKey: secret, LocalDir: filepath.Join(cfg.DataDir, "s3-local"),
		}, store.WithUploadExpiry(cfg.Serve.UploadExpiry.D()), store.WithMetadataTTL(s3.MetadataTTLOrDefault()),
			store.WithTouchGrain(touchGrain(cfg)))
	}
	return store.NewFS(cfg.StoreRoot(), store.WithGroupReadable(cfg.Storage.Filesystem.GroupReadable),
		store.WithUploadExpiry(cfg.Serve.UploadExpiry.D()), store.WithTouchGrain(touchGrain(cfg)))
}

// touchGrain is how stale a blob's last use may get before a use records
// itself: well below the gc delay (a quarter), at most the store default.
func touchGrain(cfg *config.Config) time.Duration {
	return min(cfg.Jobs.GC.Delay.D()/4, store.DefaultTouchGrain)
}

// missHook publishes the cache's misses, with the request id of the pull
// that caused them, so one pull can be followed into the worker.
func missHook(pub *events.Publisher) func(context.Context, cache.Miss) {
	return func(_ context.Context, ms cache.Miss) {
		pub.Miss(events.MissEvent{Registry: ms.Registry, Repository: ms.Repository, Reference: ms.Reference,
			Digest: ms.Digest.String(), Kind: ms.Kind, Connector: ms.Connector, Time: time.Now().UTC(), RequestID: ms.RequestID})
	}
}

// newPullRecorder returns the recorder of client pulls for the registry
// API, or nil when the store cannot keep last-pulled times.
func newPullRecorder(st store.Store, m *metrics.Set, log *slog.Logger) (*pull.Recorder, error) {
	pr, ok := st.(store.PullRecorder)
	if !ok {
		log.Warn("the store cannot record pulls: retention treats every image as never pulled")
		return nil, nil
	}
	return pull.New(pr, pull.WithLogger(log), pull.WithCounters(m.PullsDropped, m.PullFlushErrors))
}

// apiOptions are the registry API's options as serve wires them: reads
// through the cache, client manifest GETs recorded by rec (when not nil).
func apiOptions(c *cache.Cache, rec *pull.Recorder, log *slog.Logger, m *metrics.Set) []registryapi.Option {
	opts := []registryapi.Option{registryapi.WithReader(c.Serving()), registryapi.WithLogger(log), registryapi.WithMetrics(m)}
	if rec != nil {
		opts = append(opts, registryapi.WithPulls(rec))
	}
	return opts
}

// webhookHooks are cfg's webhooks, each with the registries that use its
// connector.
func webhookHooks(cfg *config.Config) []webhook.Hook {
	var hooks []webhook.Hook
	for _, w := range cfg.Webhooks {
		hk := webhook.Hook{Name: w.Name, Format: w.Format, Secret: w.Secret(), Actions: w.Actions}
		if cn, ok := cfg.Connector(w.Connector); ok {
			for _, r := range cfg.Registries {
				if slices.Contains(r.Connectors, w.Connector) {
					hk.Targets = append(hk.Targets, webhook.Target{Registry: r.Name,
						Filter: connector.Filter{Include: cn.Include, Exclude: cn.Exclude}})
				}
			}
		}
		hooks = append(hooks, hk)
	}
	return hooks
}

// apiConfig is what the registry API reads of cfg.
func apiConfig(cfg *config.Config) registryapi.Config {
	return registryapi.Config{Registries: cfg, Serve: cfg.Serve, Auth: cfg.Auth}
}

// natsSetup is the JetStream setup (stream, consumer, lease bucket) cfg
// asks for.
func natsSetup(cfg *config.Config) events.Setup {
	return events.Setup{Subjects: events.Subjects{Prefix: cfg.NATS.SubjectPrefix}, Replicas: cfg.NATS.Replicas,
		MaxDeliveries: cfg.Worker.MaxDeliveries, AckWait: cfg.Worker.AckWait.D()}
}

// natsConnAuth is how regwarm's connections to the NATS of c
// authenticate; the password comes from the environment variable c names.
func natsConnAuth(c config.NATS) events.Auth {
	a := events.Auth{CredentialsFile: c.CredentialsFile, Username: c.Username,
		CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile}
	if c.PasswordEnv != "" {
		a.Password = os.Getenv(c.PasswordEnv)
	}
	return a
}

// storeName says where the store is, for the start-up log line.
func storeName(cfg *config.Config) string {
	if s3 := cfg.Storage.S3; s3 != nil {
		return "s3://" + s3.Bucket + "/" + strings.Trim(s3.Prefix, "/")
	}
	return cfg.StoreRoot()
}

// redirectOption is the API option of storage.s3.redirect: warm blob GETs
// answered with presigned URLs of st. It returns nil when redirects are
// off or st cannot presign.
func redirectOption(cfg *config.Config, st store.Store) registryapi.Option {
	p, ok := st.(store.Presigner)
	if !ok || cfg.Storage.S3 == nil || !cfg.Storage.S3.Redirect {
		return nil
	}
	return registryapi.WithRedirect(p)
}
