package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/jobs"
)

// This file is the one adapter between the work stream and jobs: a
// message becomes a sync target, a job's result and error become an ack,
// nak or term and a result event.

// handle runs one message to its end: ack and a done event, term and a
// failed event, or a delayed nak for a temporary failure.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Error("message without metadata", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	if wait := w.missDelay - time.Since(meta.Timestamp); wait > 0 && msg.Subject() != w.bus.subj.Sync() {
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	reqID := msg.Headers().Get(events.RequestIDHeader)
	target, reqID, err := w.target(msg.Subject(), msg.Data(), reqID)
	ev := events.SyncResult{Seq: meta.Sequence.Stream, Deliveries: meta.NumDelivered, RequestID: reqID}
	if err != nil {
		ev.Image = describe(msg.Data())
		w.finish(msg, ev, fmt.Errorf("%w: %w", jobs.ErrPermanent, err), start, false)
		return
	}
	stop := w.keepAlive(msg)
	res, err := w.syncer.Run(ctx, target)
	stop()
	ev.Image, ev.Digest, ev.Manifests = res.Image, res.Digest, res.Manifests
	ev.BlobsFetched, ev.BlobsPresent, ev.Bytes = res.BlobsFetched, res.BlobsPresent, res.Bytes
	w.finish(msg, ev, err, start, target.Blob != "")
}

// target decodes a message of the work stream into a sync target, with
// the request id of the pull that caused it (the header's, or a miss
// event's own). Both sync requests and miss events are accepted.
func (w *Worker) target(subject string, data []byte, reqID string) (jobs.Target, string, error) {
	m, err := w.bus.subj.Decode(subject, data)
	if err != nil {
		return jobs.Target{}, reqID, err
	}
	if r := m.Sync; r != nil {
		t, err := w.syncer.Resolve(jobs.Request{Image: r.Image, Platforms: r.Platforms, Referrers: r.Referrers, Blob: r.Blob})
		return t, reqID, err
	}
	if reqID == "" {
		reqID = m.Miss.RequestID
	}
	t, err := w.syncer.MissTarget(m.Miss.Registry, m.Miss.Repository, m.Miss.Digest, m.Miss.Blob)
	return t, reqID, err
}

// ackAction is how a message is settled.
type ackAction int

const (
	ackDone ackAction = iota // ack: the job is done
	ackNak                   // nak with a delay: delivered again later
	ackTerm                  // term: never delivered again
)

// settle is the one switch from a job's error to its message's ack: none
// is acked, a permanent failure (or any on the last allowed delivery) is
// terminated, anything else is retried after delay.
func settle(err error, deliveries uint64, maxDeliveries int) (act ackAction, delay time.Duration) {
	switch {
	case err == nil:
		return ackDone, 0
	case permanentFailure(err) || deliveries >= uint64(max(maxDeliveries, 1)):
		return ackTerm, 0
	}
	return ackNak, retryDelay(deliveries, err)
}

// finish settles msg according to err and publishes the outcome. A blob
// job (a blob miss) is logged with its repository as image, the blob as
// digest and kind=blob, without a manifest count.
func (w *Worker) finish(msg jetstream.Msg, res events.SyncResult, err error, start time.Time, blob bool) {
	res.DurationMS = time.Since(start).Milliseconds()
	log := w.log.With("image", res.Image, "seq", res.Seq, "request_id", res.RequestID)
	manifests := []any{"manifests", res.Manifests}
	if blob {
		repo, _, _ := strings.Cut(res.Image, "@")
		log = w.log.With("image", repo, "kind", "blob", "seq", res.Seq, "request_id", res.RequestID)
		manifests = nil
	}
	act, delay := settle(err, res.Deliveries, w.conf.MaxDeliveries)
	switch act {
	case ackDone:
		if aerr := ackWithRetry(msg); aerr != nil {
			// Not confirmed: the job runs again; it is idempotent.
			log.Warn("ack failed", "error", aerr)
		}
		w.metrics.SyncJobs.WithLabelValues(metrics.ResultDone).Inc()
		w.metrics.SyncDuration.Observe(time.Since(start).Seconds())
		w.metrics.SyncBytes.Add(float64(res.Bytes))
		w.metrics.SyncBlobs.WithLabelValues("fetched").Add(float64(res.BlobsFetched))
		w.metrics.SyncBlobs.WithLabelValues("present").Add(float64(res.BlobsPresent))
		log.Info("sync done", append(append([]any{"digest", res.Digest}, manifests...), "blobs_fetched", res.BlobsFetched,
			"blobs_present", res.BlobsPresent, "bytes", res.Bytes, "duration_ms", res.DurationMS)...)
		w.publish(msg, w.bus.subj.SyncDone(), res)
	case ackNak:
		log.Warn("sync failed; will retry", "error", err, "deliveries", res.Deliveries, "retry_in", delay)
		if nerr := msg.NakWithDelay(delay); nerr != nil {
			log.Warn("nak failed", "error", nerr)
		}
	case ackTerm:
		permanent := permanentFailure(err)
		res.Error = jobs.ErrorText(err)
		if !permanent {
			res.Error = fmt.Sprintf("gave up after %d deliveries: %s", res.Deliveries, res.Error)
		}
		// Plain Term: nats-server 2.9 ignores a term that carries a reason.
		if terr := msg.Term(); terr != nil {
			log.Warn("term failed", "error", terr)
		}
		w.metrics.SyncJobs.WithLabelValues(metrics.ResultFailed).Inc()
		w.metrics.SyncDuration.Observe(time.Since(start).Seconds())
		log.Warn("sync failed", "error", res.Error, "permanent", permanent)
		w.publish(msg, w.bus.subj.SyncFailed(), res)
	}
}

// permanentFailure maps a failed job's error kind to term (true) or a
// delayed nak (false): a request that cannot succeed is terminated;
// anything else (our fault, corrupt content being re-fetched, an upstream
// down or rate limiting) is retried until MaxDeliveries.
func permanentFailure(err error) bool {
	if errors.Is(err, manifest.ErrTooManyReferences) {
		return true // over the hard cap whatever the upstream's own fault
	}
	switch fault.Of(err) {
	case fault.NotFound, fault.Invalid, fault.Denied:
		return true
	case fault.RateLimited, fault.Unavailable, fault.Corrupt, fault.Internal:
		return false
	}
	return false
}

// retryDelay backs off exponentially from 1s to 5m, or longer if the
// upstream asked for it with Retry-After.
func retryDelay(deliveries uint64, err error) time.Duration {
	d := time.Second << min(deliveries, 9)
	d = min(d, 5*time.Minute)
	if ra := fault.RetryAfter(err); ra > d {
		d = ra
	}
	return d
}

// describe renders a message body for a failure event: printable text up
// to 128 bytes.
func describe(data []byte) string {
	s := strings.TrimSpace(string(data))
	if len(s) > 128 {
		s = s[:128] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r == 0xfffd {
			return '?'
		}
		return r
	}, s)
}
