// Package fill is the blob fill engine of the pull-through cache: it
// downloads a blob from the first source that has it into the store,
// once per registry and digest however many callers want it, and lets
// every caller read the bytes while they arrive.
//
//   - Coalescing: concurrent callers of one key join one Fill (Join).
//   - Detached: a fill outlives the request that started it, bounded by a
//     total and an idle timeout; each caller waits with its own ctx.
//   - Spool and followers: the body goes into the store's spool (or into
//     memory for a small blob) and Readers follow it as it grows.
//   - Verify before the last byte: a Reader gets the final byte only once
//     the whole blob hashed to its digest, so no client ever receives a
//     complete corrupt blob; WaitVerified holds back everything (Range).
//   - Cross-process lease: with a Leaser, one process of many fetches a
//     blob; the others wait for the holder's release (watched, with a slow
//     recheck as safety net) and then adopt what it stored.
//
// What may be shared between repositories, what is counted, and when a
// client's content is written are the caller's policy, given as a Job's
// hooks and the Config.
package fill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
)

// Leaser grants cross-process leases (NATS KV in regwarm).
type Leaser interface {
	// Acquire takes key; ok is false when another process holds it.
	Acquire(ctx context.Context, key string) (release func(), ok bool, err error)
	// Released blocks until nobody holds key or ctx ends (ctx's error).
	Released(ctx context.Context, key string) error
}

// Config is what an Engine needs besides its store. Zero fields take a
// default.
type Config struct {
	Leases  Leaser        // nil: fills are coalesced within this process only
	Log     *slog.Logger  // default: discard
	Timeout time.Duration // bounds a fill in total (default 1 h)
	Idle    time.Duration // bounds a read of the body making no progress (default 1 min)
	// AfterFunc arms the idle watchdog (default time.AfterFunc); tests
	// inject a clock here.
	AfterFunc func(d time.Duration, f func()) Timer
	Recheck   time.Duration // bounds each wait for another process's lease (default 2 s)
	Memory    int64         // bytes of blobs held in memory at once (default 64 MiB)
	// Busy records a client's cold work (an upstream download for a
	// client in progress); the returned func ends it and may be called
	// twice. Default: nothing.
	Busy func() (end func())
	// Later stores a verified in-memory blob a client's fill received:
	// it calls write when it is a good moment (write-behind). Default:
	// write at once.
	Later func(ctx context.Context, write func() error) error
	// Written is told the result of each store write of a fill.
	Written func(err error)
}

// Job is one blob to fill and the caller's policy for it.
type Job struct {
	Repo    store.Repo // stored into (and linked in) this repository
	Digest  digest.Digest
	Sources []connector.Source // tried in order
	Client  bool               // for a client: stored write-behind (Config.Later)
	// Adopt is asked, when the blob's content is in the store already
	// (stored by another fill or process), to link it into Repo if the
	// sharing rules allow it without a fetch; it reports whether it did.
	// An error ends the fill. Nil: never adopt.
	Adopt func(ctx context.Context) (bool, error)
	// Fetched is told the source that served the blob once it is stored.
	Fetched func(source string)
}

// Engine runs fills. Its state is the fills in flight, the memory held
// by in-memory bodies and the detached goroutines (for Wait).
type Engine struct {
	st  store.Store
	cfg Config
	mem budget

	mu    sync.Mutex // guards fills
	fills map[Key]*Fill
	work  sync.WaitGroup
}

// New returns an engine filling st.
func New(st store.Store, cfg Config) (*Engine, error) {
	if st == nil {
		return nil, errors.New("fill: nil store")
	}
	if cfg.Timeout < 0 || cfg.Idle < 0 || cfg.Recheck < 0 || cfg.Memory < 0 {
		return nil, errors.New("fill: negative limit")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Hour
	}
	if cfg.AfterFunc == nil {
		cfg.AfterFunc = func(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
	}
	if cfg.Idle == 0 {
		cfg.Idle = time.Minute
	}
	if cfg.Recheck == 0 {
		cfg.Recheck = 2 * time.Second
	}
	if cfg.Busy == nil {
		cfg.Busy = func() func() { return func() {} }
	}
	if cfg.Later == nil {
		cfg.Later = func(_ context.Context, write func() error) error { return write() }
	}
	if cfg.Written == nil {
		cfg.Written = func(error) {}
	}
	return &Engine{st: st, cfg: cfg, mem: budget{limit: cfg.Memory}, fills: map[Key]*Fill{}}, nil
}

// Get returns the fill in flight for key, or nil.
func (e *Engine) Get(key Key) *Fill {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fills[key]
}

// Join returns the fill in flight for j's registry and digest, or starts
// one for j (detached from ctx, whose values it keeps); leader reports
// whether this call started it. A joined fill may be storing the blob
// for another repository of the registry (Fill.Repo).
func (e *Engine) Join(ctx context.Context, j Job) (f *Fill, leader bool) {
	key := Key{j.Repo.Registry, j.Digest}
	e.mu.Lock()
	defer e.mu.Unlock()
	if f := e.fills[key]; f != nil {
		return f, false
	}
	f = newFill(j.Repo)
	f.client = j.Client
	e.fills[key] = f
	e.work.Add(1)
	go func() { defer e.work.Done(); e.run(ctx, key, f, j) }()
	return f, true
}

// Wait blocks until every fill in flight has ended.
func (e *Engine) Wait() { e.work.Wait() }

// MemoryHigh reports whether more than half the memory budget is held by
// in-memory bodies (write-behind should not wait then).
func (e *Engine) MemoryHigh() bool { return e.MemoryHeld() > e.mem.max()/2 }

// MemoryHeld returns the bytes in-memory bodies hold now.
func (e *Engine) MemoryHeld() int64 { return e.mem.used.Load() }

// end ends f with err and forgets it, so the next caller starts afresh.
func (e *Engine) end(key Key, f *Fill, err error, fetched bool) {
	e.mu.Lock()
	if e.fills[key] == f {
		delete(e.fills, key)
	}
	e.mu.Unlock()
	f.finish(err, fetched)
}

// run fills f: under the lease (when there is a lease service), one look
// at the store (adopt), then the sources in order.
func (e *Engine) run(reqCtx context.Context, key Key, f *Fill, j Job) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), e.cfg.Timeout)
	defer cancel()
	end := func() {}
	if j.Client {
		end = e.cfg.Busy()
	}
	defer end()
	// verified lets readers have the last byte and ends the fill's share
	// of cold work: what follows is storing.
	verified := func() { f.markVerified(); end() }
	if e.cfg.Leases != nil {
		release, finished := e.awaitLease(ctx, key, f, j)
		if finished {
			return
		}
		if release != nil {
			defer release()
		}
	} else if e.adopt(ctx, key, f, j) {
		return
	}
	start := time.Now()
	var lastErr error
	for _, src := range j.Sources {
		rc, size, err := src.GetBlob(ctx, j.Repo.Name, j.Digest)
		if err != nil {
			lastErr = keepFailure(lastErr, err)
			continue
		}
		// The body is closed as soon as it is read (stream does that), so
		// the connector's concurrency slot is free while the blob is stored.
		err = blameUpstream(e.stream(ctx, cancel, f, verified, j, rc, size))
		_ = rc.Close()
		e.cfg.Written(err)
		if err == nil {
			e.cfg.Log.Debug("blob cached", "registry", j.Repo.Registry, "repo", j.Repo.Name, "digest", j.Digest,
				"connector", src.Name(), "bytes", f.Size(), "duration", time.Since(start))
			if j.Fetched != nil {
				j.Fetched(src.Name())
			}
			e.end(key, f, nil, true)
			return
		}
		e.cfg.Log.Warn("blob fill failed", "registry", j.Repo.Registry, "repo", j.Repo.Name, "digest", j.Digest,
			"connector", src.Name(), "error", err)
		lastErr = err
		if f.exposed() {
			break // readers saw this source's bytes; do not switch sources under them
		}
	}
	if lastErr == nil || connector.IsNotFound(lastErr) {
		lastErr = fmt.Errorf("%w: %s", store.ErrBlobUnknown, j.Digest)
	}
	e.end(key, f, lastErr, true)
}

// adopt is the fill's one look at the store: when the blob's content is
// stored (by a fill that ended just before this one started, or another
// process) and Job.Adopt links it, f ends without a fetch (true).
func (e *Engine) adopt(ctx context.Context, key Key, f *Fill, j Job) bool {
	if j.Adopt == nil {
		return false
	}
	if _, err := e.st.HasBlob(ctx, j.Digest); err != nil {
		return false
	}
	linked, err := j.Adopt(ctx)
	if err == nil && !linked {
		return false
	}
	e.end(key, f, err, false)
	return true
}

// awaitLease takes the cross-process fetch lease of the digest. While
// another process holds it, it waits for the release and then looks at
// the store (adopt); content the other process stored that may not be
// adopted is fetched here once the lease is free. Without a working lease
// service it lets the fill go ahead unleased: pulls never depend on NATS.
func (e *Engine) awaitLease(ctx context.Context, key Key, f *Fill, j Job) (release func(), finished bool) {
	d := j.Digest
	lease := "blob." + string(d.Algorithm()) + "." + d.Encoded()
	for {
		rel, ok, err := e.cfg.Leases.Acquire(ctx, lease)
		if err != nil {
			e.cfg.Log.Warn("fetch lease unavailable; fetching without it", "digest", d, "error", err)
			return nil, e.adopt(ctx, key, f, j)
		}
		if ok {
			if e.adopt(ctx, key, f, j) { // stored meanwhile by the previous holder
				rel()
				return nil, true
			}
			return rel, false
		}
		// Another process holds it: wait for its release, then look again.
		if e.adopt(ctx, key, f, j) {
			return nil, true
		}
		if err := e.waitLease(ctx, lease); ctx.Err() != nil {
			e.end(key, f, ctx.Err(), false)
			return nil, true
		} else if err != nil {
			e.cfg.Log.Warn("fetch lease unavailable; fetching without it", "digest", d, "error", err)
			return nil, false
		}
	}
}

// waitLease waits until lease's holder released it, or for Recheck at
// most. An error other than the recheck timing out is the lease service's.
func (e *Engine) waitLease(ctx context.Context, lease string) error {
	wctx, cancel := context.WithTimeout(ctx, e.cfg.Recheck)
	defer cancel()
	err := e.cfg.Leases.Released(wctx, lease)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return nil
	}
	return err
}

// stream copies rc into the store: through a spool that readers follow when
// the store supports it and the size is known, else with a plain PutBlob.
// A read that makes no progress for Idle cancels the fill.
func (e *Engine) stream(ctx context.Context, cancel context.CancelFunc, f *Fill, verified func(), j Job, rc io.ReadCloser, size int64) error {
	watchdog := e.cfg.AfterFunc(e.cfg.Idle, cancel)
	defer watchdog.Stop()
	src := &watchedBody{rc: rc, ctx: ctx, watchdog: watchdog, idle: e.cfg.Idle}
	if size >= 0 && size <= MemMax && e.mem.take(size) {
		return e.streamMem(ctx, f, verified, j, src, size)
	}
	sp, ok := e.st.(store.Spooler)
	if !ok || size < 0 {
		f.start(nil, size)
		return e.st.PutBlob(ctx, j.Repo, j.Digest, size, src)
	}
	spool, err := sp.Spool(ctx, j.Digest, size)
	if err != nil {
		return err
	}
	f.start(spool, size)
	if err := spool.Fill(src, f.advance); err != nil {
		return readFailure(ctx, err)
	}
	// Verify, let readers have the last byte, then commit at once. (Its
	// bytes are in the page cache already; deferring the fsync of a large
	// file measured slower than overlapping it with the client's last
	// reads.)
	_ = src.Close()
	if err := spool.Verify(); err != nil {
		return err
	}
	verified()
	return spool.Commit(ctx, j.Repo)
}

// streamMem receives a small blob into memory, hashing what arrived in a
// second goroutine, then stores it once verified (a client's through
// Config.Later).
func (e *Engine) streamMem(ctx context.Context, f *Fill, verified func(), j Job, src io.ReadCloser, size int64) error {
	d := j.Digest
	ms := newMemSpool(size, &e.mem)
	f.start(ms, size)
	h := d.Algorithm().Hash()
	chunks := make(chan []byte, 64)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range chunks {
			h.Write(b)
		}
	}()
	err := readAll(ctx, f, d, src, ms.buf[:size], chunks)
	close(chunks)
	_ = src.Close()
	<-hashed
	if err != nil {
		return err
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return fmt.Errorf("%w: got %s, want %s", store.ErrDigestMismatch, got, d)
	}
	verified()
	write := func() error {
		if vp, ok := e.st.(store.VerifiedPutter); ok {
			return vp.PutVerifiedBlob(ctx, j.Repo, d, ms.buf)
		}
		return e.st.PutBlob(ctx, j.Repo, d, size, bytes.NewReader(ms.buf))
	}
	if j.Client {
		return e.cfg.Later(ctx, write)
	}
	return write()
}

// readAll reads exactly len(buf) bytes of blob d from src into buf,
// telling f and the hasher (chunks) of each piece as it arrives.
func readAll(ctx context.Context, f *Fill, d digest.Digest, src io.Reader, buf []byte, chunks chan<- []byte) error {
	size := int64(len(buf))
	var written int64
	for written < size {
		n, rerr := src.Read(buf[written:])
		if n > 0 {
			chunks <- buf[written : written+int64(n)]
			written += int64(n)
			f.advance(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return readFailure(ctx, rerr)
		}
	}
	if written < size {
		return fmt.Errorf("%w: blob %s: got %d bytes, want %d", store.ErrSizeMismatch, d, written, size)
	}
	// One more byte would reveal a longer body.
	var extra [1]byte
	if n, _ := io.ReadFull(src, extra[:]); n > 0 {
		return fmt.Errorf("%w: blob %s: more than %d bytes", store.ErrSizeMismatch, d, size)
	}
	return nil
}

// blameUpstream marks a body that failed verification as the upstream's
// fault (kind Unavailable), not the client's; it still matches the store's
// mismatch sentinels.
func blameUpstream(err error) error {
	if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) {
		return fmt.Errorf("%w: %w", connector.ErrMismatch, err)
	}
	return err
}

// readFailure says why reading an upstream body failed.
func readFailure(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("upstream stalled or fill timed out: %w", err)
	}
	return err
}

// keepFailure prefers a real failure over "not found" so that a 404 from one
// source does not hide another being down.
func keepFailure(prev, err error) error {
	if prev == nil || connector.IsNotFound(prev) {
		return err
	}
	return prev
}

// Timer is a watchdog armed by Config.AfterFunc (*time.Timer is one).
type Timer interface {
	Reset(d time.Duration) bool
	Stop() bool
}

// watchedBody reads an upstream body, pushing back the idle watchdog on
// every read and failing once the fill's context ended.
type watchedBody struct {
	rc       io.ReadCloser
	ctx      context.Context
	watchdog Timer
	idle     time.Duration
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.watchdog.Reset(b.idle)
	if err == nil && b.ctx.Err() != nil {
		err = b.ctx.Err()
	}
	return n, err
}

// Close closes the body and stops the watchdog: what follows the last
// read (verifying, waiting to store, storing) is not upstream idleness.
func (b *watchedBody) Close() error {
	b.watchdog.Stop()
	return b.rc.Close()
}
