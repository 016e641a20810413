package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/jobs"
)

// Worker consumes sync requests and cache misses from the work stream and
// runs them as sync jobs, with bounded concurrency and explicit acks.
type Worker struct {
	cfg     *config.Config
	bus     *bus
	syncer  *jobs.Syncer
	log     *slog.Logger
	metrics *metrics.Set
	// missDelay holds a miss-triggered job until its event is this old: a
	// worker in another process than serve cannot see the pull that
	// caused it, so it lets the pull go first (and serve store its
	// manifests, see missSettle).
	missDelay time.Duration
}

// missSettle is the missDelay of `regwarm worker`: a little more than
// serve's write-behind delay for manifests, so the job finds them stored.
const missSettle = 1200 * time.Millisecond

// jobDrain is how long running jobs may finish after shutdown begins;
// unfinished ones are handed back to the stream.
const jobDrain = 10 * time.Second

// Run consumes until ctx ends, then lets running jobs finish (up to
// jobDrain) and returns. A consumer that goes away (deleted, NATS lost for
// good) is set up again and consumed anew.
func (w *Worker) Run(ctx context.Context) error {
	select {
	case <-w.bus.ready:
	case <-ctx.Done():
		return nil
	}
	n := max(w.cfg.Worker.Concurrency, 1)
	go w.watchPending(ctx)

	// Jobs get their own context: cancelled jobDrain after shutdown starts.
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	go func() {
		<-ctx.Done()
		t := time.NewTimer(jobDrain)
		defer t.Stop()
		select {
		case <-t.C:
			cancelJobs()
		case <-jobCtx.Done():
		}
	}()
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		// Short pull expiries: a pull parked on a NATS node that died is
		// noticed after two missed heartbeats (half the expiry each).
		iter, err := w.bus.consumer().Messages(jetstream.PullMaxMessages(n), jetstream.PullExpiry(5*time.Second))
		if err == nil {
			w.log.Info("worker consuming", "consumer", w.bus.subj.Consumer(), "concurrency", n)
			began := time.Now()
			err = w.consume(ctx, jobCtx, iter, sem, &wg)
			if ctx.Err() != nil {
				break
			}
			if time.Since(began) > time.Minute {
				backoff = 500 * time.Millisecond
			}
		}
		w.log.Warn("work consumer lost; setting it up again", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
		w.bus.reapply(ctx)
	}
	return nil
}

// consume hands messages to jobs until the iterator ends.
func (w *Worker) consume(ctx, jobCtx context.Context, iter jetstream.MessagesContext, sem chan struct{}, wg *sync.WaitGroup) error {
	stop := context.AfterFunc(ctx, iter.Stop)
	defer stop()
	defer iter.Stop()
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			w.handle(jobCtx, msg)
		}()
	}
}

// watchPending keeps regwarm_work_pending_messages current.
func (w *Worker) watchPending(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if info, err := w.bus.consumer().Info(ictx); err == nil {
			w.metrics.WorkPending.Set(float64(info.NumPending + uint64(info.NumAckPending)))
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

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
	res := events.SyncResult{Seq: meta.Sequence.Stream, Deliveries: meta.NumDelivered}
	target, err := w.target(msg, &reqID)
	res.RequestID = reqID
	if err != nil {
		res.Image = describe(msg.Data())
		w.finish(msg, res, fmt.Errorf("%w: %w", jobs.ErrPermanent, err), start, false)
		return
	}
	res.Image = target.Image()
	stop := w.keepAlive(msg)
	out, err := w.syncer.Run(ctx, target)
	stop()
	out.Seq, out.Deliveries, out.RequestID = res.Seq, res.Deliveries, reqID
	w.finish(msg, out, err, start, target.Blob != "")
}

// target decodes a message into a sync target. Both sync requests and
// miss events are accepted; anything else is malformed.
func (w *Worker) target(msg jetstream.Msg, reqID *string) (jobs.Target, error) {
	subj := msg.Subject()
	if subj == w.bus.subj.Sync() {
		req, err := events.ParseSyncRequest(msg.Data())
		if err != nil {
			return jobs.Target{}, err
		}
		return w.syncer.Resolve(req)
	}
	if !strings.HasPrefix(subj, strings.TrimSuffix(w.bus.subj.Misses(), ">")) {
		return jobs.Target{}, fmt.Errorf("%w: unexpected subject %q", events.ErrBadMessage, subj)
	}
	ev, err := events.ParseMissEvent(msg.Data())
	if err != nil {
		return jobs.Target{}, err
	}
	if *reqID == "" {
		*reqID = ev.RequestID
	}
	d, err := ref.ParseDigest(ev.Digest)
	if err != nil {
		return jobs.Target{}, fmt.Errorf("%w: miss event digest: %v", events.ErrBadMessage, err)
	}
	reg, ok := w.cfg.Registry(ev.Registry)
	if !ok {
		return jobs.Target{}, fmt.Errorf("%w: no registry named %q", jobs.ErrUnknownRegistry, ev.Registry)
	}
	if err := ref.ValidName(ev.Repository); err != nil {
		return jobs.Target{}, fmt.Errorf("%w: miss event: %v", events.ErrBadMessage, err)
	}
	t := jobs.NewTarget(reg, ev.Repository, d.String())
	switch ev.Kind {
	case metrics.KindBlob:
		t.Blob = d
	case metrics.KindManifest:
	default:
		return jobs.Target{}, fmt.Errorf("%w: miss event kind %q", events.ErrBadMessage, ev.Kind)
	}
	return t, nil
}

// keepAlive tells JetStream the job is still running, so long downloads
// are not redelivered to another worker.
func (w *Worker) keepAlive(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	every := max(w.cfg.Worker.AckWait.D()/3, time.Second)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// finish acknowledges msg according to err and publishes the outcome. A
// blob job (a blob miss) is logged with its repository as image, the blob
// as digest and kind=blob, without a manifest count.
func (w *Worker) finish(msg jetstream.Msg, res events.SyncResult, err error, start time.Time, blob bool) {
	res.DurationMS = time.Since(start).Milliseconds()
	log := w.log.With("image", res.Image, "seq", res.Seq, "request_id", res.RequestID)
	manifests := []any{"manifests", res.Manifests}
	if blob {
		repo, _, _ := strings.Cut(res.Image, "@")
		log = w.log.With("image", repo, "kind", "blob", "seq", res.Seq, "request_id", res.RequestID)
		manifests = nil
	}
	if err == nil {
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
		return
	}
	res.Error = jobs.ErrorText(err)
	permanent := permanentFailure(err)
	if !permanent && res.Deliveries < uint64(max(w.cfg.Worker.MaxDeliveries, 1)) {
		delay := retryDelay(res.Deliveries, err)
		log.Warn("sync failed; will retry", "error", err, "deliveries", res.Deliveries, "retry_in", delay)
		if nerr := msg.NakWithDelay(delay); nerr != nil {
			log.Warn("nak failed", "error", nerr)
		}
		return
	}
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

// permanentFailure is the one switch from a failed job's error kind to
// term (true) or a delayed nak (false): a request that cannot succeed is
// terminated; anything else (our fault, corrupt content being re-fetched,
// an upstream down or rate limiting) is retried until MaxDeliveries.
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

// ackWithRetry acknowledges msg and waits for the server's confirmation,
// retrying for a few seconds while a NATS cluster elects a new leader.
func ackWithRetry(msg jetstream.Msg) error {
	var err error
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = msg.DoubleAck(ctx)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			return nil
		}
		time.Sleep(time.Duration(i+1) * 300 * time.Millisecond)
	}
	return err
}

func (w *Worker) publish(msg jetstream.Msg, subject string, res events.SyncResult) {
	data, err := json.Marshal(res)
	if err != nil {
		return
	}
	if err := w.bus.nc.Publish(subject, data); err != nil {
		w.log.Warn("publishing result failed", "subject", subject, "error", err)
	}
	reply := msg.Headers().Get(events.ReplyHeader)
	switch {
	case reply == "":
	case !ReplyAllowed(reply):
		w.log.Warn("reply subject ignored: only _INBOX.> is allowed", "header", events.ReplyHeader,
			"subject", describe([]byte(reply)), "seq", res.Seq)
	default:
		if err := w.bus.nc.Publish(reply, data); err != nil {
			w.log.Warn("publishing result failed", "subject", reply, "error", err)
		}
	}
}

// ReplyAllowed reports whether the worker sends a result to the subject
// a Regwarm-Reply-To header names: only literal _INBOX.> subjects, never
// JetStream, KV or regwarm's own subjects.
func ReplyAllowed(subject string) bool {
	return strings.HasPrefix(subject, "_INBOX.") && validSubject(subject)
}

// validSubject accepts a literal subject a client may ask results on.
func validSubject(s string) bool {
	if s == "" || len(s) > 256 || strings.ContainsAny(s, " \t\r\n*>") {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" {
			return false
		}
	}
	return true
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
