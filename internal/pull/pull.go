// Package pull records when clients last pulled each image. The registry
// API calls Recorder.Pulled on every client manifest GET; that only updates
// an in-memory map (coalescing repeated pulls of one manifest) and never
// touches the store. Run flushes the map to the store's PullRecorder
// ability every interval (one second by default) and once more at
// shutdown, so every serve process sharing the store sees the pull within
// about a second. Worker syncs and jobs read through the cache, not the
// API, and therefore never count as pulls.
package pull

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regwarm/regwarm/internal/store"
)

// Defaults of a Recorder.
const (
	DefaultInterval = time.Second
	DefaultCapacity = 16384 // distinct manifests waiting for a flush
	flushTimeout    = 10 * time.Second
)

// key is one pulled manifest of one repository.
type key struct {
	repo store.Repo
	d    digest.Digest
}

// Recorder batches client pulls and writes them to the store. Its methods
// are safe for concurrent use.
type Recorder struct {
	st       store.PullRecorder
	now      func() time.Time
	interval time.Duration
	capacity int
	log      *slog.Logger
	dropped  prometheus.Counter // nil: not counted
	failed   prometheus.Counter

	mu      sync.Mutex
	pending map[key]int64 // Unix seconds of the latest pull
}

// Option configures a Recorder.
type Option func(*Recorder) error

// WithClock sets the clock that stamps pulls.
func WithClock(now func() time.Time) Option {
	return func(r *Recorder) error {
		if now == nil {
			return errors.New("pull: nil clock")
		}
		r.now = now
		return nil
	}
}

// WithInterval sets how often Run flushes; at most a second keeps pulls
// visible to gc within the contract's 2 s.
func WithInterval(d time.Duration) Option {
	return func(r *Recorder) error {
		if d <= 0 {
			return errors.New("pull: interval must be positive")
		}
		r.interval = d
		return nil
	}
}

// WithCapacity bounds the distinct manifests buffered between flushes;
// pulls of further manifests are dropped (and counted) until the next flush.
func WithCapacity(n int) Option {
	return func(r *Recorder) error {
		if n < 1 {
			return errors.New("pull: capacity must be positive")
		}
		r.capacity = n
		return nil
	}
}

// WithLogger sets the logger for flush failures.
func WithLogger(l *slog.Logger) Option {
	return func(r *Recorder) error {
		if l == nil {
			return errors.New("pull: nil logger")
		}
		r.log = l
		return nil
	}
}

// WithCounters counts pulls dropped because the buffer was full, and
// failed flushes.
func WithCounters(dropped, failed prometheus.Counter) Option {
	return func(r *Recorder) error {
		r.dropped, r.failed = dropped, failed
		return nil
	}
}

// New returns a Recorder writing to st.
func New(st store.PullRecorder, opts ...Option) (*Recorder, error) {
	if st == nil {
		return nil, errors.New("pull: nil store")
	}
	r := &Recorder{st: st, now: time.Now, interval: DefaultInterval, capacity: DefaultCapacity,
		log: slog.New(slog.DiscardHandler), pending: map[key]int64{}}
	for _, o := range opts {
		if err := o(r); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Pulled notes that a client pulled manifest d of repo now. It never
// blocks on I/O.
func (r *Recorder) Pulled(repo store.Repo, d digest.Digest) {
	sec := r.now().Unix()
	k := key{repo, d}
	r.mu.Lock()
	old, ok := r.pending[k]
	switch {
	case ok:
		if sec > old {
			r.pending[k] = sec
		}
	case len(r.pending) < r.capacity:
		r.pending[k] = sec
	default:
		r.mu.Unlock()
		if r.dropped != nil {
			r.dropped.Inc()
		}
		return
	}
	r.mu.Unlock()
}

// Pending returns how many manifests wait for the next flush.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// Flush writes the buffered pulls to the store, one RecordPulls per
// repository. Pulls a failed write did not record go back into the buffer
// for the next flush (as far as it has room).
func (r *Recorder) Flush(ctx context.Context) error {
	r.mu.Lock()
	batch := r.pending
	r.pending = make(map[key]int64, len(batch))
	r.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	byRepo := map[store.Repo]map[digest.Digest]time.Time{}
	for k, sec := range batch {
		m := byRepo[k.repo]
		if m == nil {
			m = map[digest.Digest]time.Time{}
			byRepo[k.repo] = m
		}
		m[k.d] = time.Unix(sec, 0).UTC()
	}
	var errs []error
	for repo, pulls := range byRepo {
		if err := r.st.RecordPulls(ctx, repo, pulls); err != nil {
			errs = append(errs, err)
			r.requeue(repo, pulls)
		}
	}
	return errors.Join(errs...)
}

// requeue puts pulls that were not written back into the buffer.
func (r *Recorder) requeue(repo store.Repo, pulls map[digest.Digest]time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for d, t := range pulls {
		k, sec := key{repo, d}, t.Unix()
		if old, ok := r.pending[k]; ok {
			r.pending[k] = max(old, sec)
		} else if len(r.pending) < r.capacity {
			r.pending[k] = sec
		} else if r.dropped != nil {
			r.dropped.Inc()
		}
	}
}

// Run flushes every interval until ctx is done, then flushes what is left
// (bounded by a timeout of its own).
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
			r.flushLogged(fctx)
			cancel()
			return
		case <-t.C:
			r.flushLogged(ctx)
		}
	}
}

func (r *Recorder) flushLogged(ctx context.Context) {
	if err := r.Flush(ctx); err != nil {
		if ctx.Err() != nil {
			return // stopping: the pulls were requeued for Run's final flush
		}
		if r.failed != nil {
			r.failed.Inc()
		}
		r.log.Warn("recording pulls failed", "error", err)
	}
}
