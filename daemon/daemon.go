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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/regwarm/regwarm/internal/config"
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

// Runtime is one part of a process (the API server, the worker, the
// scheduler, …): Run works until ctx ends, then winds down and returns; an
// error stops the whole process.
type Runtime interface {
	Run(ctx context.Context) error
}

// runFunc adapts a function to Runtime.
type runFunc func(ctx context.Context) error

func (f runFunc) Run(ctx context.Context) error { return f(ctx) }

// Run runs a process in mode until ctx is cancelled or a runtime fails,
// then shuts down gracefully. It returns nil on a clean shutdown.
func Run(ctx context.Context, cfg *config.Config, mode Mode, log *slog.Logger) error {
	p, err := wire(ctx, cfg, mode, log)
	if err != nil {
		return err
	}
	defer p.close()
	p.health.SetReady(true)
	log.Info("regwarm started", "mode", string(mode), "store", storeName(cfg), "version", Version)
	err = runLayers(ctx, p.layers[:], func() {
		p.health.SetReady(false)
		if ctx.Err() != nil {
			log.Info("shutting down")
		}
	})
	if err != nil {
		log.Error("regwarm failed", "error", err)
	}
	return err
}

// runLayers runs every runtime of every layer under one errgroup until ctx
// ends or one fails; then, after stopping, it stops the layers from the
// last to the first, each once the layers after it returned, so that what
// a runtime relies on outlives it. It returns the first failure.
func runLayers(ctx context.Context, layers [][]Runtime, stopping func()) error {
	g, gctx := errgroup.WithContext(ctx)
	stops := make([]context.CancelFunc, len(layers))
	running := make([]sync.WaitGroup, len(layers))
	for i, layer := range layers {
		lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stops[i] = cancel
		for _, r := range layer {
			running[i].Add(1)
			g.Go(func() error {
				defer running[i].Done()
				return r.Run(lctx)
			})
		}
	}
	g.Go(func() error {
		<-gctx.Done()
		stopping()
		for i := len(layers) - 1; i >= 0; i-- {
			stops[i]()
			running[i].Wait()
		}
		return nil
	})
	return g.Wait()
}

// httpServer is an HTTP server runtime: bound by listen, run by Run.
type httpServer struct {
	name, addr        string
	certFile, keyFile string
	srv               *http.Server
	ln                net.Listener
	wrap              func(net.Listener) net.Listener // limits; nil: none
	log               *slog.Logger
}

// Run serves until ctx ends, then shuts down: requests in flight get
// ShutdownTimeout to finish.
func (s *httpServer) Run(ctx context.Context) error {
	served := make(chan error, 1)
	go func() { served <- s.serve() }()
	select {
	case err := <-served:
		return fmt.Errorf("%s server: %w", s.name, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown incomplete", "server", s.name, "error", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s server: %w", s.name, err)
	}
	return nil
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
