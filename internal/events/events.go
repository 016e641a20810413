// Package events defines regwarm's NATS subjects and messages, connects to
// NATS, sets up the JetStream stream, consumer and lease bucket, and
// publishes cache misses without ever blocking a pull.
package events

import (
	"strings"
	"time"

	"github.com/regwarm/regwarm/internal/fault"
)

// Subjects derives every subject from the configured prefix.
type Subjects struct{ Prefix string }

// Sync is where sync requests go (captured by the work stream).
func (s Subjects) Sync() string { return s.Prefix + ".sync" }

// Miss is where serve publishes misses of a registry.
func (s Subjects) Miss(registry string) string { return s.Prefix + ".miss." + registry }

// Misses matches every registry's misses.
func (s Subjects) Misses() string { return s.Prefix + ".miss.>" }

// SyncDone carries successful sync results.
func (s Subjects) SyncDone() string { return s.Prefix + ".events.sync.done" }

// SyncFailed carries failed sync results.
func (s Subjects) SyncFailed() string { return s.Prefix + ".events.sync.failed" }

// Report carries summaries of finished scans and verifications.
func (s Subjects) Report() string { return s.Prefix + ".events.report" }

// JobRun takes on-demand job requests (the job name is the last token).
func (s Subjects) JobRun(job string) string { return s.Prefix + ".jobs.run." + job }

// Stream is the JetStream stream that keeps work durable.
func (s Subjects) Stream() string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(s.Prefix)) + "_WORK"
}

// Consumer is the workers' shared durable consumer.
func (s Subjects) Consumer() string { return s.Prefix + "-worker" }

// LeaseBucket is the KV bucket holding fetch and job leases.
func (s Subjects) LeaseBucket() string {
	return strings.NewReplacer(".", "_", "-", "_").Replace(s.Prefix) + "_leases"
}

// ReplyHeader names the subject a sync result is also sent to.
const ReplyHeader = "Regwarm-Reply-To"

// RequestIDHeader carries the request id of the pull that caused a job.
const RequestIDHeader = "Regwarm-Request-Id"

// MaxMessageSize bounds a sync request; larger ones fail without retries.
const MaxMessageSize = 16 << 10

// Kinds of content a MissEvent names.
const (
	KindManifest = "manifest"
	KindBlob     = "blob"
)

// MissEvent is published by serve on every cache miss.
type MissEvent struct {
	Registry   string    `json:"registry"`
	Repository string    `json:"repository"`
	Reference  string    `json:"reference"`
	Digest     string    `json:"digest"`
	Kind       string    `json:"kind"` // KindManifest or KindBlob
	Connector  string    `json:"connector"`
	Time       time.Time `json:"time"`
	RequestID  string    `json:"request_id,omitempty"`
}

// SyncRequest asks a worker to warm an image.
type SyncRequest struct {
	Image     string   `json:"image"`
	Platforms []string `json:"platforms,omitempty"` // overrides the registry's sync.platforms
	Referrers *bool    `json:"referrers,omitempty"` // overrides sync.referrers
	// Blob, when set, limits the job to one blob of Image's repository
	// (what a blob miss asks for).
	Blob string `json:"blob,omitempty"`
}

// SyncResult is the outcome of one sync job.
type SyncResult struct {
	Image        string `json:"image"`
	Digest       string `json:"digest,omitempty"`
	Manifests    int    `json:"manifests"`
	BlobsFetched int    `json:"blobs_fetched"`
	BlobsPresent int    `json:"blobs_present"`
	Bytes        int64  `json:"bytes"`
	DurationMS   int64  `json:"duration_ms"`
	Error        string `json:"error,omitempty"`
	Seq          uint64 `json:"seq"`
	RequestID    string `json:"request_id,omitempty"`
	Deliveries   uint64 `json:"deliveries,omitempty"`
}

// ErrBadMessage is returned for a message that can never be processed.
var ErrBadMessage = fault.New(fault.Invalid, "malformed sync request")

// Events matches every event subject (sync results and reports).
func (s Subjects) Events() string { return s.Prefix + ".events.>" }
