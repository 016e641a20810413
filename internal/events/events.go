// Package events defines regwarm's NATS subjects and messages, connects to
// NATS, sets up the JetStream stream, consumer and lease bucket, and
// publishes cache misses without ever blocking a pull.
package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/ref"
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

// MissEvent is published by serve on every cache miss.
type MissEvent struct {
	Registry   string    `json:"registry"`
	Repository string    `json:"repository"`
	Reference  string    `json:"reference"`
	Digest     string    `json:"digest"`
	Kind       string    `json:"kind"` // manifest | blob
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

// ParseMissEvent decodes a miss event (at most MaxMessageSize bytes).
func ParseMissEvent(data []byte) (MissEvent, error) {
	var ev MissEvent
	if len(data) > MaxMessageSize {
		return ev, fmt.Errorf("%w: miss event of %d bytes", ErrBadMessage, len(data))
	}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&ev); err != nil {
		return ev, fmt.Errorf("%w: miss event: %v", ErrBadMessage, err)
	}
	return ev, nil
}

// ParseSyncRequest decodes a sync message: a plain image name, or a JSON
// object {"image": …, "platforms": […], "referrers": bool}.
func ParseSyncRequest(data []byte) (SyncRequest, error) {
	if len(data) > MaxMessageSize {
		return SyncRequest{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadMessage, len(data), MaxMessageSize)
	}
	if !utf8.Valid(data) {
		return SyncRequest{}, fmt.Errorf("%w: not UTF-8 text", ErrBadMessage)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return SyncRequest{}, fmt.Errorf("%w: empty message", ErrBadMessage)
	}
	var req SyncRequest
	if trimmed[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return SyncRequest{}, fmt.Errorf("%w: %v", ErrBadMessage, err)
		}
		if dec.More() {
			return SyncRequest{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadMessage)
		}
	} else {
		req.Image = string(trimmed)
	}
	if _, err := ref.ParseImage(req.Image); err != nil {
		return SyncRequest{}, fmt.Errorf("%w: image: %v", ErrBadMessage, err)
	}
	for i, p := range req.Platforms {
		if !validPlatform(p) {
			return SyncRequest{}, fmt.Errorf("%w: platforms[%d]: %q is not os/arch[/variant]", ErrBadMessage, i, p)
		}
	}
	if req.Blob != "" {
		if _, err := ref.ParseDigest(req.Blob); err != nil {
			return SyncRequest{}, fmt.Errorf("%w: blob: %v", ErrBadMessage, err)
		}
	}
	return req, nil
}

func validPlatform(p string) bool {
	parts := strings.Split(p, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return false
	}
	for _, s := range parts {
		if s == "" || len(s) > 32 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
			return false
		}
	}
	return true
}

// Events matches every event subject (sync results and reports).
func (s Subjects) Events() string { return s.Prefix + ".events.>" }
