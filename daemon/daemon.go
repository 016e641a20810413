// Package daemon runs regwarm's long-lived processes: the registry API
// server, the worker, the embedded NATS server and the admin endpoints
// (/metrics, /healthz, /readyz), with graceful shutdown.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

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

// Mode selects what a process runs.
type Mode string

// Process modes, one per CLI command.
const (
	ModeRun    Mode = "run"    // embedded NATS + serve + worker
	ModeServe  Mode = "serve"  // registry API only
	ModeWorker Mode = "worker" // worker only
)

// Version is the build's version, set by cmd/regwarm.
var Version = "dev"

// ShutdownTimeout bounds how long in-flight requests may drain.
const ShutdownTimeout = 20 * time.Second

// NewLogger builds the process logger from the log config.
func NewLogger(c config.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// labels lists the label values known from the config.
func labels(cfg *config.Config) metrics.Labels {
	var l metrics.Labels
	for _, r := range cfg.Registries {
		l.Registries = append(l.Registries, r.Name)
	}
	for _, c := range cfg.Connectors {
		l.Connectors = append(l.Connectors, c.Name)
	}
	for _, w := range cfg.Webhooks {
		l.Webhooks = append(l.Webhooks, w.Name)
	}
	return l
}

// Run runs a process in mode until ctx is cancelled, then shuts down
// gracefully. It returns nil on a clean shutdown.
func Run(ctx context.Context, cfg *config.Config, mode Mode, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg, labels(cfg))

	if mode == ModeRun {
		// One `regwarm run` per data_dir (and embedded NATS store).
		locks, err := lockRun(cfg)
		if err != nil {
			return err
		}
		defer func() {
			for _, l := range locks {
				l.unlock()
			}
		}()
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return fmt.Errorf("opening store: %w", err)
	}
	health := &Health{}

	// NATS: embedded for run, external when nats.url is set.
	natsURL := cfg.NATS.URL
	var natsAuth []nats.Option
	if mode == ModeRun && natsURL == "" {
		ns, url, auth, err := StartEmbeddedNATS(cfg, log)
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		natsURL = url
		natsAuth = append(natsAuth, auth)
		log.Info("embedded nats started", "url", url, "store_dir", cfg.NATSStoreDir())
	}
	if mode == ModeWorker && natsURL == "" {
		return errors.New("the worker needs NATS: set nats.url or --nats-url")
	}
	var b *bus
	busCtx, stopBus := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBus()
	if natsURL != "" {
		host, _ := os.Hostname()
		owner := fmt.Sprintf("%s/%s/%d", mode, host, os.Getpid())
		if b, err = newBus(natsURL, cfg, "regwarm "+owner, log, natsAuth...); err != nil {
			return err
		}
		defer b.close()
		go b.run(busCtx, owner)
	} else {
		log.Warn("no nats.url: cache misses are not published and no worker warms images")
	}

	var servers []*httpServer
	admin := &http.Server{Handler: adminHandler(reg, health), ReadHeaderTimeout: 10 * time.Second}
	servers = append(servers, &httpServer{name: "metrics", addr: cfg.Metrics.Listen, srv: admin})

	cacheOpts := []cache.Option{cache.WithLogger(log), cache.WithMetrics(m)}
	var pub *events.Publisher
	if b != nil {
		cacheOpts = append(cacheOpts, cache.WithLeases(b))
		if mode != ModeWorker {
			pub = events.NewPublisher(b.js, b.subj, log, m, events.DefaultBuffer)
			cacheOpts = append(cacheOpts, cache.WithMissHook(missHook(pub)))
		}
	}
	c, err := cache.New(cfg, st,
		[]connector.UpstreamOption{connector.WithMetrics(m), connector.WithLogger(log), connector.WithUserAgent("regwarm/" + Version)},
		cacheOpts...)
	if err != nil {
		return err
	}
	var rec *pull.Recorder
	if mode == ModeRun || mode == ModeServe {
		rec, err = newPullRecorder(st, m, log)
		if err != nil {
			return err
		}
		apiOpts := apiOptions(c, rec, log, m)
		if o := redirectOption(cfg, st); o != nil {
			apiOpts = append(apiOpts, o)
		}
		api, err := registryapi.New(cfg, st, apiOpts...)
		if err != nil {
			return err
		}
		var handler http.Handler = api
		if len(cfg.Webhooks) > 0 {
			var q webhook.Queue
			if b != nil {
				q = webhookQueue{js: b.js, subject: b.subj.Sync()}
			}
			handler = withWebhooks(api, webhook.New(cfg, q, webhook.WithLogger(log), webhook.WithMetrics(m), webhook.WithTags(c)))
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: cfg.Serve.HeaderTimeout.D(), IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		servers = append(servers, &httpServer{name: "api", addr: cfg.Serve.Listen, srv: srv,
			certFile: cfg.Serve.TLS.CertFile, keyFile: cfg.Serve.TLS.KeyFile,
			wrap: func(ln net.Listener) net.Listener {
				return registryapi.LimitListener(ln, cfg.Serve.MaxConnections, cfg.Serve.MaxConnectionsPerClient,
					cfg.Serve.TLS.CertFile == "", m)
			}})
	}

	// Bind every listener before reporting ready, so a port clash fails fast.
	for _, s := range servers {
		if err := s.listen(); err != nil {
			for _, o := range servers {
				o.close()
			}
			return err
		}
		log.Info("listening", "server", s.name, "addr", s.ln.Addr().String())
	}
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s server: %w", s.name, err)
			}
		}()
	}
	pullsCtx, stopPulls := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPulls()
	var pullsWG sync.WaitGroup
	if rec != nil {
		pullsWG.Add(1)
		go func() { defer pullsWG.Done(); rec.Run(pullsCtx) }()
	}
	var pubWG sync.WaitGroup
	if pub != nil {
		pubWG.Add(1)
		go func() { defer pubWG.Done(); pub.Run(busCtx) }()
	}
	workerCtx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	var workerWG sync.WaitGroup
	if mode == ModeRun || mode == ModeWorker {
		syncer := jobs.NewSyncer(cfg, c)
		w := &Worker{cfg: cfg, bus: b, syncer: syncer, log: log, metrics: m}
		if mode == ModeWorker {
			w.missDelay = missSettle // serve's pulls go first (docs/foreground.md)
		}
		health.SetProblem("nats", "not set up yet")
		go func() {
			select {
			case <-b.ready:
				health.SetProblem("nats", "")
			case <-busCtx.Done():
			}
		}()
		workerWG.Add(1)
		go func() {
			defer workerWG.Done()
			if err := w.Run(workerCtx); err != nil {
				errc <- err
			}
		}()
		repair := func(ctx context.Context, image string) error {
			_, err := b.js.Publish(ctx, b.subj.Sync(), []byte(image))
			return err
		}
		sch := &scheduler{cfg: cfg, bus: b, jobs: jobFuncs(cfg, st, c, syncer, log, repair), log: log, metrics: m,
			owner: fmt.Sprintf("%s/%d", mode, os.Getpid()), now: time.Now, running: map[string]bool{}}
		workerWG.Add(1)
		go func() {
			defer workerWG.Done()
			select {
			case <-b.ready:
			case <-workerCtx.Done():
				return
			}
			stopCron, err := sch.start(workerCtx)
			if err != nil {
				errc <- err
				return
			}
			stopReqs, err := sch.serveRequests(workerCtx)
			if err != nil {
				stopCron()
				errc <- err
				return
			}
			<-workerCtx.Done()
			stopReqs()
			stopCron()
		}()
	}
	if mode != ModeServe {
		workerWG.Add(1)
		go func() { defer workerWG.Done(); storeStats(workerCtx, st, m, log) }()
		workerWG.Add(1)
		go func() { defer workerWG.Done(); registryStats(workerCtx, cfg, st, m, log, storeStatsEvery) }()
	}
	if mode == ModeRun || mode == ModeServe {
		j := &uploadJanitor{store: st, expiry: cfg.Serve.UploadExpiry.D(), now: time.Now, log: log, metrics: m}
		workerWG.Go(func() { j.run(workerCtx) })
	}
	health.SetReady(true)
	log.Info("regwarm started", "mode", string(mode), "store", storeName(cfg), "version", Version)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("regwarm failed", "error", runErr)
	}
	health.SetReady(false)
	stopWorker()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	// The API drains first; the admin endpoint stays up until the end.
	for i := len(servers) - 1; i >= 0; i-- {
		if err := servers[i].srv.Shutdown(sctx); err != nil {
			log.Warn("shutdown incomplete", "server", servers[i].name, "error", err)
		}
	}
	wg.Wait()
	stopPulls() // the API has drained: record its last pulls
	pullsWG.Wait()
	workerWG.Wait()
	// Let detached upstream fills finish what clients already received.
	fillsDone := make(chan struct{})
	go func() { c.Wait(); close(fillsDone) }()
	select {
	case <-fillsDone:
	case <-sctx.Done():
		log.Warn("upstream fills still running at shutdown; their temporary files are discarded")
	}
	stopBus()
	pubWG.Wait()
	return runErr
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

// missHook publishes the cache's misses, with the request id of the pull
// that caused them, so one pull can be followed into the worker.
func missHook(pub *events.Publisher) func(context.Context, cache.Miss) {
	return func(_ context.Context, ms cache.Miss) {
		pub.Miss(events.MissEvent{Registry: ms.Registry, Repository: ms.Repository, Reference: ms.Reference,
			Digest: ms.Digest.String(), Kind: ms.Kind, Connector: ms.Connector, Time: time.Now().UTC(), RequestID: ms.RequestID})
	}
}

// storeStatsEvery is how often workers count the store's blobs and bytes.
const storeStatsEvery = 5 * time.Minute

// storeStats keeps regwarm_store_blobs and regwarm_store_bytes current by
// walking the store now and then (workers only: serve stays lean).
func storeStats(ctx context.Context, st store.Store, m *metrics.Set, log *slog.Logger) {
	for {
		var n, size int64
		err := st.Blobs(ctx, func(_ digest.Digest, sz int64) error {
			n++
			size += sz
			return nil
		})
		if err == nil {
			m.StoreBlobs.Set(float64(n))
			m.StoreBytes.Set(float64(size))
		} else if ctx.Err() == nil {
			log.Warn("counting the store failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(storeStatsEvery):
		}
	}
}

type httpServer struct {
	name, addr        string
	certFile, keyFile string
	srv               *http.Server
	ln                net.Listener
	wrap              func(net.Listener) net.Listener // limits; nil: none
}

func (s *httpServer) listen() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("%s listener on %s: %w", s.name, s.addr, err)
	}
	s.ln = ln
	if s.wrap != nil {
		s.ln = s.wrap(ln)
	}
	return nil
}

func (s *httpServer) close() {
	if s.ln != nil {
		_ = s.ln.Close()
	}
}

func (s *httpServer) serve() error {
	if s.certFile != "" {
		return s.srv.ServeTLS(s.ln, s.certFile, s.keyFile)
	}
	return s.srv.Serve(s.ln)
}

// Health tracks liveness and readiness for /healthz and /readyz.
type Health struct {
	ready    atomic.Bool
	mu       sync.Mutex
	problems map[string]string
}

// SetReady marks the process ready or not.
func (h *Health) SetReady(v bool) { h.ready.Store(v) }

// SetProblem records (msg != "") or clears (msg == "") a named readiness problem.
func (h *Health) SetProblem(name, msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.problems == nil {
		h.problems = map[string]string{}
	}
	if msg == "" {
		delete(h.problems, name)
	} else {
		h.problems[name] = msg
	}
}

// Ready reports readiness and the current problems.
func (h *Health) Ready() (bool, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for k, v := range h.problems {
		out = append(out, k+": "+v)
	}
	return h.ready.Load() && len(out) == 0, out
}

func adminHandler(reg *prometheus.Registry, health *Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, problems := health.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			if len(problems) == 0 {
				problems = []string{"not ready"}
			}
			_, _ = io.WriteString(w, strings.Join(problems, "\n")+"\n")
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// openStore creates data_dir readable by regwarm's user only (when it does
// not exist yet) and opens the configured store: S3 (with its local spool
// under data_dir) or the filesystem with the configured modes.
func openStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if s3 := cfg.Storage.S3; s3 != nil {
		id, secret := s3.Credentials()
		return store.NewS3(ctx, store.S3Options{
			Bucket: s3.Bucket, Prefix: s3.Prefix, Region: s3.Region, Endpoint: s3.Endpoint, PathStyle: s3.PathStyle,
			AccessKeyID: id, SecretAccessKey: secret, LocalDir: filepath.Join(cfg.DataDir, "s3-local"),
		}, store.WithUploadExpiry(cfg.Serve.UploadExpiry.D()), store.WithMetadataTTL(s3.MetadataTTLOrDefault()))
	}
	return store.NewFS(cfg.StoreRoot(), store.WithGroupReadable(cfg.Storage.Filesystem.GroupReadable),
		store.WithUploadExpiry(cfg.Serve.UploadExpiry.D()))
}

// storeName says where the store is, for the start-up log line.
func storeName(cfg *config.Config) string {
	if s3 := cfg.Storage.S3; s3 != nil {
		return "s3://" + s3.Bucket + "/" + strings.Trim(s3.Prefix, "/")
	}
	return cfg.StoreRoot()
}
