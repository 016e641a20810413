// Package metrics defines regwarm's Prometheus collectors. Every process
// builds one Set on its own registry; label values known in advance are
// initialised to zero so every series exists from start-up.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Label values used across the code.
const (
	ResultHit     = "hit"
	ResultMiss    = "miss"
	ResultStale   = "stale"
	KindManifest  = "manifest"
	KindBlob      = "blob"
	ResultOK      = "ok"
	ResultError   = "error"
	ResultDropped = "dropped"
	ResultDone    = "done"
	ResultFailed  = "failed"
	ResultSkipped = "skipped"
)

// Routes are the bounded values of the route label.
var Routes = []string{"ping", "catalog", "manifest", "blob", "upload", "tags", "referrers", "other"}

// Jobs are the scheduled job names.
var Jobs = []string{"dangling_scan", "verify", "refresh", "gc"}

// Labels lists the label values known at start-up.
type Labels struct {
	Registries []string
	Connectors []string
	Webhooks   []string
	// Budgets are the registries' retention.max_bytes (absent or 0: none).
	Budgets map[string]int64
}

// Set holds every regwarm collector.
type Set struct {
	HTTPRequests       *prometheus.CounterVec
	HTTPDuration       *prometheus.HistogramVec
	HTTPResponseBytes  *prometheus.CounterVec
	HTTPInflight       prometheus.Gauge
	CacheRequests      *prometheus.CounterVec
	UpstreamRequests   *prometheus.CounterVec
	UpstreamDuration   *prometheus.HistogramVec
	UpstreamBytes      *prometheus.CounterVec
	UpstreamRateLimit  *prometheus.GaugeVec
	Coalesced          prometheus.Counter
	PendingWrites      prometheus.Gauge
	EventsPublished    *prometheus.CounterVec
	EventBufferDepth   prometheus.Gauge
	SyncJobs           *prometheus.CounterVec
	SyncDuration       prometheus.Histogram
	SyncBytes          prometheus.Counter
	SyncBlobs          *prometheus.CounterVec
	WorkPending        prometheus.Gauge
	JobRuns            *prometheus.CounterVec
	JobLastSuccess     *prometheus.GaugeVec
	JobDuration        *prometheus.HistogramVec
	DanglingReferences *prometheus.GaugeVec
	StoreBlobs         prometheus.Gauge
	StoreBytes         prometheus.Gauge
	StoreWrites        *prometheus.CounterVec
	WebhookRequests    *prometheus.CounterVec
	WebhookImages      *prometheus.CounterVec
	Limits             *Limits // connection limits, body timeouts, logins
	// UploadsExpired counts upload sessions discarded after serve.upload_expiry idle.
	UploadsExpired prometheus.Counter

	// Lifecycle (lifecycle.go).
	RegistryBytes   *prometheus.GaugeVec   // distinct blobs and manifests per registry
	PullsDropped    prometheus.Counter     // client pulls not recorded: buffer full
	PullFlushErrors prometheus.Counter     // failed writes of recorded pulls
	RegistryBudget  *prometheus.GaugeVec   // retention.max_bytes per registry (0: none)
	GCRemoved       *prometheus.CounterVec // tags, manifests, blobs gc removed, by registry, kind, reason
	GCFreed         prometheus.Counter     // bytes of content gc removed
	GCEarlyRuns     *prometheus.CounterVec // gc runs started early, by trigger (budget/watermark)
}

// New creates the collectors, registers them on reg and initialises the
// label sets in l.
func New(reg prometheus.Registerer, l Labels) *Set {
	s := &Set{
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_http_requests_total", Help: "HTTP requests to the registry API by route, method and status code.",
		}, []string{"route", "method", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "regwarm_http_request_duration_seconds", Help: "Registry API request latency by route and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route", "method"}),
		HTTPResponseBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_http_response_bytes_total", Help: "Bytes sent in registry API response bodies by route.",
		}, []string{"route"}),
		HTTPInflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regwarm_http_inflight_requests", Help: "Registry API requests being served.",
		}),
		CacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_cache_requests_total", Help: "Pull requests by registry, kind (manifest/blob) and result (hit/miss/stale).",
		}, []string{"registry", "kind", "result"}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_upstream_requests_total", Help: "Requests to upstream registries by connector and status code (\"error\" when no response).",
		}, []string{"connector", "code"}),
		UpstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "regwarm_upstream_request_duration_seconds", Help: "Upstream response latency (time to headers) by connector.",
			Buckets: prometheus.DefBuckets,
		}, []string{"connector"}),
		UpstreamBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_upstream_bytes_total", Help: "Bytes read from upstream registries by connector.",
		}, []string{"connector"}),
		UpstreamRateLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regwarm_upstream_ratelimit_remaining", Help: "Last RateLimit-Remaining reported by the upstream (-1 unknown).",
		}, []string{"connector"}),
		Coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regwarm_coalesced_requests_total", Help: "Requests that waited for an upstream fetch already in flight instead of starting their own.",
		}),
		PendingWrites: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regwarm_cache_pending_writes", Help: "Manifests and blobs answered to clients from verified bytes and not written to the store yet.",
		}),
		EventsPublished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_events_published_total", Help: "Events published to NATS by result (ok/error/dropped).",
		}, []string{"result"}),
		EventBufferDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regwarm_events_buffered", Help: "Miss events waiting to be published.",
		}),
		SyncJobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_sync_jobs_total", Help: "Finished sync jobs by result (done/failed).",
		}, []string{"result"}),
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "regwarm_sync_duration_seconds", Help: "Duration of sync jobs.",
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900},
		}),
		SyncBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regwarm_sync_bytes_total", Help: "Bytes fetched by sync jobs.",
		}),
		SyncBlobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_sync_blobs_total", Help: "Blobs handled by sync jobs by result (fetched/present).",
		}, []string{"result"}),
		WorkPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regwarm_work_pending_messages", Help: "Sync and miss messages waiting for a worker.",
		}),
		JobRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_job_runs_total", Help: "Scheduled job runs by job and result (ok/error/skipped).",
		}, []string{"job", "result"}),
		JobLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regwarm_job_last_success_timestamp_seconds", Help: "Unix time of the job's last successful run (0 never).",
		}, []string{"job"}),
		JobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "regwarm_job_duration_seconds", Help: "Duration of scheduled job runs.",
			Buckets: []float64{.1, .5, 1, 5, 10, 30, 60, 300, 900, 3600},
		}, []string{"job"}),
		DanglingReferences: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regwarm_dangling_references", Help: "Dangling references found by the last scan, per registry.",
		}, []string{"registry"}),
		StoreBlobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regwarm_store_blobs", Help: "Blobs in the content store (as of the last count).",
		}),
		StoreBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regwarm_store_bytes", Help: "Bytes in the content store (as of the last count).",
		}),
		StoreWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_store_writes_total", Help: "Content writes by result (ok/error; error includes digest mismatches).",
		}, []string{"result"}),
	}
	reg.MustRegister(s.HTTPRequests, s.HTTPDuration, s.HTTPResponseBytes, s.HTTPInflight,
		s.CacheRequests, s.UpstreamRequests, s.UpstreamDuration, s.UpstreamBytes, s.UpstreamRateLimit,
		s.Coalesced, s.PendingWrites, s.EventsPublished, s.EventBufferDepth, s.SyncJobs, s.SyncDuration, s.SyncBytes,
		s.SyncBlobs, s.WorkPending, s.JobRuns, s.JobLastSuccess, s.JobDuration, s.DanglingReferences,
		s.StoreBlobs, s.StoreBytes, s.StoreWrites)
	s.UploadsExpired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "regwarm_upload_sessions_expired_total", Help: "Upload sessions discarded after serve.upload_expiry without a chunk.",
	})
	reg.MustRegister(s.UploadsExpired)
	s.newWebhooks(reg)
	s.Limits = newLimits(reg)
	s.newLifecycle(reg, l)
	s.init(l)
	return s
}

func (s *Set) init(l Labels) {
	for _, r := range l.Registries {
		for _, k := range []string{KindManifest, KindBlob} {
			for _, res := range []string{ResultHit, ResultMiss, ResultStale} {
				s.CacheRequests.WithLabelValues(r, k, res)
			}
		}
		s.DanglingReferences.WithLabelValues(r)
	}
	for _, c := range l.Connectors {
		s.UpstreamBytes.WithLabelValues(c)
		s.UpstreamRateLimit.WithLabelValues(c).Set(-1)
		s.UpstreamDuration.WithLabelValues(c)
	}
	for _, r := range []string{ResultOK, ResultError, ResultDropped} {
		s.EventsPublished.WithLabelValues(r)
	}
	for _, r := range []string{ResultDone, ResultFailed} {
		s.SyncJobs.WithLabelValues(r)
	}
	for _, r := range []string{"fetched", "present"} {
		s.SyncBlobs.WithLabelValues(r)
	}
	for _, j := range Jobs {
		for _, r := range []string{ResultOK, ResultError, ResultSkipped} {
			s.JobRuns.WithLabelValues(j, r)
		}
		s.JobLastSuccess.WithLabelValues(j)
		s.JobDuration.WithLabelValues(j)
	}
	for _, r := range []string{ResultOK, ResultError} {
		s.StoreWrites.WithLabelValues(r)
	}
	for _, w := range l.Webhooks {
		for _, r := range WebhookRequestResults {
			s.WebhookRequests.WithLabelValues(w, r)
		}
		for _, r := range WebhookImageResults {
			s.WebhookImages.WithLabelValues(w, r)
		}
	}
}

// WebhookRequestResults are the results of a webhook request: accepted
// (202), unauthorized (401), bad_request (400), too_large (413) and
// unavailable (503: no NATS, or queueing failed).
var WebhookRequestResults = []string{"accepted", "unauthorized", "bad_request", "too_large", "unavailable"}

// WebhookImageResults are the outcomes of one image a notification names:
// queued (a sync job per registry), duplicate (JetStream already had the
// job), excluded (no registry admits the repository), ignored (an event or
// action regwarm does not act on), invalid (a name it cannot use),
// revalidated (a delete marked cached tags stale) and failed.
var WebhookImageResults = []string{"queued", "duplicate", "excluded", "ignored", "invalid", "revalidated", "failed"}

func (s *Set) newWebhooks(reg prometheus.Registerer) {
	s.WebhookRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regwarm_webhook_requests_total", Help: "Webhook requests by webhook and result (accepted/unauthorized/bad_request/too_large/unavailable).",
	}, []string{"webhook", "result"})
	s.WebhookImages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regwarm_webhook_images_total", Help: "Images named by webhook notifications by webhook and result (queued/duplicate/excluded/ignored/invalid/revalidated/failed).",
	}, []string{"webhook", "result"})
	reg.MustRegister(s.WebhookRequests, s.WebhookImages)
}
