package webhook

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// MaxBody caps a webhook request body; larger ones are answered 413.
const MaxBody = 1 << 20

// PathPrefix is where the webhooks live: POST /webhooks/<name>.
const PathPrefix = "/webhooks/"

// queueTimeout bounds how long a request waits for NATS to take its jobs.
const queueTimeout = 5 * time.Second

// Queue takes sync jobs. Sync publishes image (a regwarm.sync message)
// with id as its deduplication id and reports whether the queue already
// had a job with that id.
type Queue interface {
	Sync(ctx context.Context, image, id string) (duplicate bool, err error)
}

// Tags marks cached tags stale (a delete notification).
type Tags interface {
	ExpireTags(ctx context.Context, repo store.Repo, tag string, d digest.Digest) (int, error)
}

// Handler serves POST /webhooks/<name> for every configured webhook.
type Handler struct {
	queue   Queue
	tags    Tags
	log     *slog.Logger
	metrics *metrics.Set
	hooks   map[string]*hook
}

// Hook is one webhook as the handler needs it.
type Hook struct {
	Name    string
	Format  string   // a format Parse reads (config.WebhookDistribution, …)
	Secret  string   // the shared secret senders present
	Actions []string // what it acts on: ActionPush, ActionDelete
	// Targets are the registries that use the webhook's connector, with
	// that connector's filter.
	Targets []Target
}

// Target is a registry a webhook's images are synced into.
type Target struct {
	Registry string
	Filter   connector.Filter
}

type hook struct {
	Hook
	secret [sha256.Size]byte
}

// Option configures a Handler.
type Option func(*Handler)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(h *Handler) { h.log = l } }

// WithMetrics sets the metrics the handler counts into.
func WithMetrics(m *metrics.Set) Option { return func(h *Handler) { h.metrics = m } }

// WithTags lets delete notifications mark cached tags stale.
func WithTags(t Tags) Option { return func(h *Handler) { h.tags = t } }

// New returns the handler of hooks. A nil queue (serve without NATS)
// answers every notification 503.
func New(hooks []Hook, q Queue, opts ...Option) *Handler {
	h := &Handler{queue: q, log: slog.New(slog.DiscardHandler), hooks: map[string]*hook{}}
	for _, o := range opts {
		o(h)
	}
	for _, hk := range hooks {
		h.hooks[hk.Name] = &hook{Hook: hk, secret: sha256.Sum256([]byte(hk.Secret))}
	}
	return h
}

// ServeHTTP answers one notification: 202 once its images are queued, or
// an OCI-style error.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, PathPrefix)
	hk, ok := h.hooks[name]
	if !ok {
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "no webhook with this name")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "webhooks take POST")
		return
	}
	if !hk.authorized(r) {
		h.request(name, "unauthorized")
		h.log.Warn("webhook request without a valid secret", "webhook", name, "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="regwarm webhook"`)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "the webhook's shared secret is missing or wrong")
		return
	}
	if h.queue == nil {
		h.request(name, "unavailable")
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "webhooks need NATS: this serve process has no nats.url")
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.request(name, "too_large")
			h.log.Warn("webhook payload refused", "webhook", name, "error", "larger than 1 MiB")
			writeError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID", "payload larger than 1 MiB")
			return
		}
		h.request(name, "bad_request")
		writeError(w, http.StatusBadRequest, "BAD_REQUEST", "reading the payload failed")
		return
	}
	n, err := Parse(hk.Format, data)
	if err != nil {
		h.request(name, "bad_request")
		h.log.Warn("webhook payload refused", "webhook", name, "format", hk.Format, "error", err)
		writeError(w, http.StatusBadRequest, "BAD_REQUEST", "unreadable "+hk.Format+" payload: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), queueTimeout)
	defer cancel()
	sum := summary{Ignored: n.Ignored, Invalid: n.Invalid}
	var failed error
	for _, ev := range n.Events {
		if err := h.apply(ctx, hk, ev, &sum); err != nil && failed == nil {
			failed = err
		}
	}
	for res, k := range map[string]int{"queued": sum.Queued, "duplicate": sum.Duplicate, "excluded": sum.Excluded,
		"ignored": sum.Ignored, "invalid": sum.Invalid, "revalidated": sum.Revalidated, "failed": sum.Failed} {
		h.images(name, res, k)
	}
	if failed != nil {
		// Refused, so the sender retries; what was queued is deduplicated.
		h.request(name, "unavailable")
		h.log.Error("webhook jobs could not be queued", "webhook", name, "error", failed)
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "queueing the sync jobs failed; retry later")
		return
	}
	h.request(name, "accepted")
	lvl := slog.LevelDebug // pulls and blob pushes: distribution announces every one
	if sum.Queued+sum.Revalidated+sum.Invalid > 0 {
		lvl = slog.LevelInfo
	}
	h.log.Log(ctx, lvl, "webhook notification", "webhook", name, "queued", sum.Queued, "duplicate", sum.Duplicate,
		"excluded", sum.Excluded, "ignored", sum.Ignored, "invalid", sum.Invalid, "revalidated", sum.Revalidated)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(sum)
}

// summary is the 202 answer's body.
type summary struct {
	Queued      int `json:"queued"`
	Duplicate   int `json:"duplicate"`
	Excluded    int `json:"excluded"`
	Ignored     int `json:"ignored"`
	Invalid     int `json:"invalid"`
	Revalidated int `json:"revalidated"`
	Failed      int `json:"failed"`
}

// apply queues a push (one job per admitting registry) or marks a
// deleted tag stale.
func (h *Handler) apply(ctx context.Context, hk *hook, ev Event, sum *summary) error {
	if !slices.Contains(hk.Actions, ev.Action) || (ev.Action == ActionDelete && h.tags == nil) {
		sum.Ignored++
		return nil
	}
	admitted := false
	for _, t := range hk.Targets {
		if !t.Filter.Allowed(ev.Repository) {
			continue
		}
		admitted = true
		if ev.Action == ActionDelete {
			k, err := h.tags.ExpireTags(ctx, store.Repo{Registry: t.Registry, Name: ev.Repository}, ev.Tag, ev.Digest)
			if err != nil {
				sum.Failed++
				return err
			}
			sum.Revalidated += k
			continue
		}
		dup, err := h.queue.Sync(ctx, Image(t.Registry, ev), JobID(t.Registry, ev))
		switch {
		case err != nil:
			sum.Failed++
			return err
		case dup:
			sum.Duplicate++
		default:
			sum.Queued++
		}
	}
	if !admitted {
		sum.Excluded++
	}
	return nil
}

// Image is the sync message for ev in registry: <registry>/<repo>:<tag>,
// <registry>/<repo>@<digest>, or both (the tag moves to what upstream says).
func Image(registry string, ev Event) string {
	s := registry + "/" + ev.Repository
	if ev.Tag != "" {
		s += ":" + ev.Tag
	}
	if ev.Digest != "" {
		s += "@" + ev.Digest.String()
	}
	return s
}

// JobID is the JetStream deduplication id (Nats-Msg-Id) of ev's job in
// registry: a retried notification, or the same push named twice, is
// one job within the stream's duplicate window.
func JobID(registry string, ev Event) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{registry, ev.Repository, ev.Tag, ev.Digest.String(), ev.Stamp}, "\x00")))
	return "webhook-" + hex.EncodeToString(sum[:16])
}

// authorized checks the shared secret: Authorization: Bearer <secret>,
// Authorization: <secret> (Harbor's auth header), or ?token=<secret>. The
// comparison is constant-time (of hashes, so not even the length leaks).
func (hk *hook) authorized(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	cands := []string{auth}
	if t, ok := strings.CutPrefix(auth, "Bearer "); ok {
		cands = append(cands, t)
	}
	if t := r.URL.Query().Get("token"); t != "" {
		cands = append(cands, t)
	}
	ok := 0
	for _, c := range cands {
		if c == "" {
			continue
		}
		s := sha256.Sum256([]byte(c))
		ok |= subtle.ConstantTimeCompare(s[:], hk.secret[:])
	}
	return ok == 1
}

func (h *Handler) request(name, result string) {
	if h.metrics != nil {
		h.metrics.WebhookRequests.WithLabelValues(name, result).Inc()
	}
}

func (h *Handler) images(name, result string, n int) {
	if h.metrics != nil && n > 0 {
		h.metrics.WebhookImages.WithLabelValues(name, result).Add(float64(n))
	}
}

// writeError writes an OCI-style error body.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
