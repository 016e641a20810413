// Package registryapi serves the OCI Distribution API (v1.1) over regwarm's
// registries: routing, handlers, OCI error bodies and access checks.
package registryapi

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// Handler is the registry API. Reads go through a store.Reader (the local
// store, or the pull-through cache wrapping it); writes go to the store.
type Handler struct {
	regs    Registries
	serve   config.Serve
	store   store.Store
	read    Reader
	log     *slog.Logger
	metrics *metrics.Set
	auth    *authenticator // nil: no authentication
	pulls   PullSink       // nil: pulls are not recorded
	// redirect presigns warm blob GETs (storage.s3.redirect); nil: the
	// bytes are served here.
	redirect store.Presigner
}

// redirectExpiry is how long a presigned blob URL stays valid.
const redirectExpiry = 20 * time.Minute

// WithRedirect answers GETs of stored blobs with a 307 to a URL from p
// (HEAD still answers here); blobs not stored yet are served as always.
func WithRedirect(p store.Presigner) Option {
	return func(h *Handler) error {
		if p == nil {
			return errors.New("registryapi: nil presigner")
		}
		h.redirect = p
		return nil
	}
}

// PullSink is told of every client manifest GET (by tag or digest) that
// succeeds: the manifest the reference resolved to. It must not block
// (pull.Recorder only updates a map).
type PullSink interface {
	Pulled(repo store.Repo, d digest.Digest)
}

// WithPulls records client manifest pulls in p.
func WithPulls(p PullSink) Option {
	return func(h *Handler) error {
		if p == nil {
			return errors.New("registryapi: nil pull sink")
		}
		h.pulls = p
		return nil
	}
}

var _ http.Handler = (*Handler)(nil)

// Option configures a Handler.
type Option func(*Handler) error

// Reader is what the API reads through: the pull-through cache's serving
// view (the store itself without one). Request returns the reads of one
// client request with id: a cache counts one result per request and kind
// through it, and names id in the misses it publishes.
type Reader interface {
	Request(id string) store.Reader
}

// storeReader reads the store itself, for every request.
type storeReader struct{ store.Reader }

func (s storeReader) Request(string) store.Reader { return s.Reader }

// WithReader serves reads from r instead of the store (the pull-through cache).
func WithReader(r Reader) Option {
	return func(h *Handler) error {
		if r == nil {
			return errors.New("registryapi: nil reader")
		}
		h.read = r
		return nil
	}
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option {
	return func(h *Handler) error {
		if l == nil {
			return errors.New("registryapi: nil logger")
		}
		h.log = l
		return nil
	}
}

// WithMetrics records request metrics in m.
func WithMetrics(m *metrics.Set) Option {
	return func(h *Handler) error {
		if m == nil {
			return errors.New("registryapi: nil metrics")
		}
		h.metrics = m
		return nil
	}
}

// New returns the API handler for the registries of cfg over st.
func New(cfg Config, st store.Store, opts ...Option) (*Handler, error) {
	if cfg.Registries == nil || st == nil {
		return nil, errors.New("registryapi: registries and store are required")
	}
	h := &Handler{regs: cfg.Registries, serve: cfg.Serve, store: st, read: storeReader{st}, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		if err := o(h); err != nil {
			return nil, err
		}
	}
	if h.metrics == nil {
		h.metrics = metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	}
	if cfg.Auth != nil {
		a, err := newAuthenticator(cfg.Auth, cfg.Serve, h.log, h.metrics)
		if err != nil {
			return nil, err
		}
		h.auth = a
	}
	return h, nil
}

// ServeHTTP routes a /v2/ request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := r.Header.Get("X-Request-Id")
	if !validID(id) {
		id = newID()
	}
	h.limitBody(w, r)
	rw := &responseWriter{ResponseWriter: w, status: http.StatusOK}
	rw.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	rw.Header().Set("X-Request-Id", id)
	h.metrics.HTTPInflight.Inc()

	if h.auth != nil && r.URL.Path == "/auth/token" {
		h.serveToken(rw, r, id)
		h.metrics.HTTPInflight.Dec()
		return
	}
	rt, ae := h.parsePath(r)
	rt.id = id
	if ae == nil {
		rt.read = h.read.Request(id)
	}
	if ae == nil && h.auth != nil {
		ae = h.authorize(rw, r, rt)
	}
	if ae == nil {
		ae = h.dispatch(rw, r, rt)
	}
	if ae != nil {
		writeError(rw, r, ae)
	}

	h.metrics.HTTPInflight.Dec()
	d := time.Since(start)
	h.metrics.HTTPRequests.WithLabelValues(rt.kind, methodLabel(r.Method), strconv.Itoa(rw.status)).Inc()
	h.metrics.HTTPDuration.WithLabelValues(rt.kind, methodLabel(r.Method)).Observe(d.Seconds())
	h.metrics.HTTPResponseBytes.WithLabelValues(rt.kind).Add(float64(rw.bytes))
	h.log.Debug("request", "method", r.Method, "route", rt.kind, "registry", rt.repo.Registry,
		"repo", rt.repo.Name, "status", rw.status, "bytes", rw.bytes, "duration", d, "request_id", id)
}

func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete:
		return m
	}
	return "OTHER"
}

// fail logs an unexpected error with the request id and returns what the
// client sees. Known error kinds are returned as their OCI codes unlogged.
func (h *Handler) fail(r *http.Request, rt route, err error) *apiError {
	ae := classify(err, rt)
	if ae.code.Status >= 500 {
		h.log.Error("request failed", "method", r.Method, "route", rt.kind, "registry", rt.repo.Registry,
			"repo", rt.repo.Name, "error", err, "request_id", rt.id)
	}
	return ae
}

func (h *Handler) dispatch(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	switch rt.kind {
	case routePing:
		return h.ping(w, r)
	case routeCatalog:
		if isRead(r) {
			return h.catalog(w, r, rt)
		}
	case routeTags:
		if isRead(r) {
			return h.tags(w, r, rt)
		}
	case routeReferrers:
		if isRead(r) {
			return h.referrers(w, r, rt)
		}
	case routeManifest:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			return h.getManifest(w, r, rt)
		case http.MethodPut:
			return h.putManifest(w, r, rt)
		case http.MethodDelete:
			return h.deleteManifest(w, r, rt)
		}
	case routeBlob:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			return h.getBlob(w, r, rt)
		case http.MethodDelete:
			return h.deleteBlob(w, r, rt)
		}
	case routeUpload:
		if rt.ref == "" {
			if r.Method == http.MethodPost {
				return h.startUpload(w, r, rt)
			}
			break
		}
		switch r.Method {
		case http.MethodGet:
			return h.uploadStatus(w, r, rt)
		case http.MethodPatch:
			return h.patchUpload(w, r, rt)
		case http.MethodPut:
			return h.putUpload(w, r, rt)
		case http.MethodDelete:
			return h.cancelUpload(w, r, rt)
		}
	}
	return errorf(CodeUnsupported, "method %s not allowed here", r.Method)
}

func isRead(r *http.Request) bool { return r.Method == http.MethodGet || r.Method == http.MethodHead }

func (h *Handler) ping(w http.ResponseWriter, r *http.Request) *apiError {
	if !isRead(r) {
		return errorf(CodeUnsupported, "")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "3")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = io.WriteString(w, "{}\n")
	}
	return nil
}

// responseWriter records the status and body size, and keeps io.ReaderFrom
// so blob bodies still go out with sendfile.
type responseWriter struct {
	http.ResponseWriter
	status  int
	bytes   int64
	written bool
}

func (w *responseWriter) WriteHeader(code int) {
	if !w.written {
		w.status, w.written = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	w.written = true
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// ReadFrom passes readers through to the connection (sendfile for files).
func (w *responseWriter) ReadFrom(src io.Reader) (int64, error) {
	w.written = true
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, src)
	}
	w.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
