package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/jobs"
)

// Worker consumes sync requests and cache misses from the work stream and
// runs them as sync jobs, with bounded concurrency and explicit acks.
type Worker struct {
	conf    config.Worker // concurrency, ack wait, max deliveries
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
	n := max(w.conf.Concurrency, 1)
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

// keepAlive tells JetStream the job is still running, so long downloads
// are not redelivered to another worker.
func (w *Worker) keepAlive(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	every := max(w.conf.AckWait.D()/3, time.Second)
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
