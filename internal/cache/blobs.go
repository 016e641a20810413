package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// statBlob returns a blob's size: from the store, or from the first
// connector that has it (content already stored for another repository is
// then linked into this one where the sharing rule allows, see share.go).
// In a registry that accepts pushes the blob is fetched first: a pushing
// client told that a layer exists skips uploading it, so it must really be
// here.
func (c *Cache) statBlob(ctx context.Context, m mode, repo store.Repo, d digest.Digest) (int64, error) {
	n, err := c.store.StatBlob(ctx, repo, d)
	if err == nil || !errors.Is(err, store.ErrBlobUnknown) {
		return n, err
	}
	sources := c.sources(m, repo)
	if len(sources) == 0 {
		return n, err
	}
	if reg := c.regs[repo.Registry]; reg != nil && reg.push {
		if _, _, err := c.headBlob(ctx, repo, d, sources); err != nil {
			return 0, err
		}
		_, n, err := c.fetch(ctx, m, repo, d)
		return n, err
	}
	if linked, err := c.linkStored(ctx, repo, d, sources); err != nil || linked {
		if err != nil {
			return 0, err
		}
		return c.store.StatBlob(ctx, repo, d)
	}
	if f := c.fills.get(fillKey{repo.Registry, d}); f != nil {
		select {
		case <-f.ready:
			if size := f.knownSize(); size >= 0 {
				return size, nil
			}
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	size, _, err := c.headBlob(ctx, repo, d, sources)
	return size, err
}

// linkStored links blob d into repo when its content is already stored,
// no fill of it is running, and the sharing rule (shareStored) allows it
// without a fetch. It reports whether d is now linked; when it is not, the
// caller fetches d through repo's own connectors (a fill, verified).
func (c *Cache) linkStored(ctx context.Context, repo store.Repo, d digest.Digest, sources []connector.Source) (bool, error) {
	if _, err := c.store.HasBlob(ctx, d); err != nil || c.fills.get(fillKey{repo.Registry, d}) != nil {
		return false, nil
	}
	return c.shareStored(ctx, repo, d, sources)
}

func (c *Cache) headBlob(ctx context.Context, repo store.Repo, d digest.Digest, sources []connector.Source) (int64, string, error) {
	var lastErr error
	for _, src := range sources {
		size, err := src.HeadBlob(ctx, repo.Name, d)
		if err == nil {
			return size, src.Name(), nil
		}
		lastErr = keepFailure(lastErr, err)
	}
	if connector.IsNotFound(lastErr) {
		return 0, "", fmt.Errorf("%w: %s", store.ErrBlobUnknown, d)
	}
	return 0, "", lastErr
}

// openBlob opens a blob from the store, or streams it from the first
// connector that has it while storing it. The fill is detached from the
// client: it completes even if the client goes away, and every concurrent
// reader shares it. The final byte is only handed out after the digest
// was verified, so no client ever receives a complete corrupt blob.
func (c *Cache) openBlob(ctx context.Context, m mode, repo store.Repo, d digest.Digest) (store.Blob, error) {
	b, err := c.store.OpenBlob(ctx, repo, d)
	if err == nil {
		c.count(m, repo.Registry, metrics.KindBlob, metrics.ResultHit)
		return b, nil
	}
	if !errors.Is(err, store.ErrBlobUnknown) {
		return nil, err
	}
	sources := c.sources(m, repo)
	if len(sources) == 0 {
		return nil, err
	}
	if linked, err := c.linkStored(ctx, repo, d, sources); err != nil {
		return nil, err
	} else if linked {
		if b, err := c.store.OpenBlob(ctx, repo, d); err == nil {
			c.count(m, repo.Registry, metrics.KindBlob, metrics.ResultHit)
			return b, nil
		}
	}
	c.count(m, repo.Registry, metrics.KindBlob, metrics.ResultMiss)
	endClient := func() {}
	if m.client {
		endClient = c.prio.client() // until the client has read the fill
	}
	defer func() { endClient() }()
	f, _, err := c.shareFill(ctx, m, repo, d, sources)
	if err != nil {
		return nil, err
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r, ok := f.reader(ctx.Done()); ok {
		endActive, endReader := c.active.begin(), endClient
		r.onClose = func() { endActive(); endReader() }
		endClient = func() {}
		if f.repo != repo {
			c.linkWhenStored(ctx, f, repo, d) // the reader may finish before the write
		}
		return r, nil
	}
	// No stream to share (failed, or unknown size): wait for the result.
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := c.filled(ctx, f, repo, d); err != nil {
		return nil, err
	}
	return c.store.OpenBlob(ctx, repo, d)
}

// readAheadMax bounds the config blobs fetched ahead of the client.
const readAheadMax = 1 << 20

// readAhead starts fetching an image's config when its manifest was
// fetched for a client: every client asks for it next (after the layers,
// for some), and it is small. Nothing else is fetched ahead.
func (c *Cache) readAhead(ctx context.Context, m mode, repo store.Repo, desc ocispec.Descriptor) {
	if desc.Size > readAheadMax || desc.Digest.Validate() != nil || manifest.NonDistributable(desc) {
		return
	}
	if _, err := c.store.HasBlob(ctx, desc.Digest); err == nil {
		return // stored already (perhaps for another repository)
	}
	if sources := c.sources(m, repo); len(sources) > 0 {
		c.joinFill(ctx, m, repo, desc.Digest, sources)
	}
}

// joinFill joins the fill of d in flight for repo's registry, or starts
// one (detached from ctx); leader reports whether this call started it.
// The fill may be storing d for another repository: see shareFill.
func (c *Cache) joinFill(ctx context.Context, m mode, repo store.Repo, d digest.Digest, sources []connector.Source) (f *fill, leader bool) {
	f, leader = c.fills.join(fillKey{repo.Registry, d}, func() *fill {
		f := newFill(repo)
		c.work.Add(1)
		go func() { defer c.work.Done(); c.runFill(ctx, m, f, repo, d, sources) }()
		return f
	})
	if !leader {
		c.metrics.Coalesced.Inc()
	}
	return f, leader
}

// shareFill is joinFill for a caller that needs d in repo. A fill another
// repository of the registry started (a layer two images share) is only
// shared once a connector confirms that repo has d as well (a HEAD, as
// for linking a blob stored for a repository of the same registry, see
// share.go; fills are per registry, so a fill for another registry is
// never joined); d is then linked into repo once the fill stored it
// (filled, linkWhenStored).
func (c *Cache) shareFill(ctx context.Context, m mode, repo store.Repo, d digest.Digest, sources []connector.Source) (f *fill, leader bool, err error) {
	f, leader = c.joinFill(ctx, m, repo, d, sources)
	if leader || f.repo == repo {
		return f, leader, nil
	}
	if _, _, err := c.headBlob(ctx, repo, d, sources); err != nil {
		return nil, false, err
	}
	return f, false, nil
}

// filled returns the result of the ended fill f, with d linked into repo
// when f stored it for another repository.
func (c *Cache) filled(ctx context.Context, f *fill, repo store.Repo, d digest.Digest) error {
	if err := f.result(); err != nil || f.repo == repo {
		return err
	}
	err := c.store.LinkBlob(ctx, repo, d)
	if err != nil {
		c.log.Warn("linking a blob fetched for another repository failed", "registry", repo.Registry,
			"repo", repo.Name, "digest", d, "error", err)
	}
	return err
}

// linkWhenStored links d into repo once f (storing it for another
// repository) has ended, in the background.
func (c *Cache) linkWhenStored(ctx context.Context, f *fill, repo store.Repo, d digest.Digest) {
	c.work.Add(1)
	go func() {
		defer c.work.Done()
		<-f.done
		_ = c.filled(context.WithoutCancel(ctx), f, repo, d)
	}()
}

// endFill ends f with err and forgets it.
func (c *Cache) endFill(k fillKey, f *fill, err error) {
	c.fills.forget(k, f)
	f.finish(err)
}

// runFill fetches a blob from the first source that has it into the store.
func (c *Cache) runFill(reqCtx context.Context, m mode, f *fill, repo store.Repo, d digest.Digest, sources []connector.Source) {
	ctx, cancel := c.detached(reqCtx)
	defer cancel()
	end := c.active.begin()
	defer end()
	f.endActive, f.foreground = end, m.client
	// A fill that finished just before this one started may have stored it.
	if _, err := c.store.StatBlob(ctx, repo, d); err == nil {
		f.setNotFetched()
		c.endFill(fillKey{repo.Registry, d}, f, nil)
		return
	}
	if c.leases != nil {
		release, finished := c.awaitLease(ctx, f, repo, d, sources)
		if finished {
			return
		}
		if release != nil {
			defer release()
		}
	}
	start := time.Now()
	var lastErr error
	for _, src := range sources {
		rc, size, err := src.GetBlob(ctx, repo.Name, d)
		if err != nil {
			lastErr = keepFailure(lastErr, err)
			continue
		}
		// The body is closed as soon as it is read (stream does that), so
		// the connector's concurrency slot is free while the blob is stored.
		err = blameUpstream(c.stream(ctx, cancel, f, repo, d, rc, size))
		_ = rc.Close()
		c.metrics.StoreWrites.WithLabelValues(resultOf(err)).Inc()
		if err == nil {
			c.log.Debug("blob cached", "registry", repo.Registry, "repo", repo.Name, "digest", d,
				"connector", src.Name(), "bytes", f.knownSize(), "duration", time.Since(start))
			c.miss(reqCtx, m, Miss{Registry: repo.Registry, Repository: repo.Name, Reference: d.String(),
				Digest: d, Kind: metrics.KindBlob, Connector: src.Name()})
			c.endFill(fillKey{repo.Registry, d}, f, nil)
			return
		}
		c.log.Warn("blob fill failed", "registry", repo.Registry, "repo", repo.Name, "digest", d,
			"connector", src.Name(), "error", err)
		lastErr = err
		if f.exposed() {
			break // readers saw this source's bytes; do not switch sources under them
		}
	}
	if lastErr == nil || connector.IsNotFound(lastErr) {
		lastErr = fmt.Errorf("%w: %s", store.ErrBlobUnknown, d)
	}
	c.endFill(fillKey{repo.Registry, d}, f, lastErr)
}

// stream copies rc into the store: through a spool that readers follow when
// the store supports it and the size is known, else with a plain PutBlob.
// A read that makes no progress for idleTimeout cancels the fill.
func (c *Cache) stream(ctx context.Context, cancel context.CancelFunc, f *fill, repo store.Repo, d digest.Digest, rc io.ReadCloser, size int64) error {
	watchdog := time.AfterFunc(c.idleTimeout, cancel)
	defer watchdog.Stop()
	src := &watchedBody{rc: rc, ctx: ctx, watchdog: watchdog, idle: c.idleTimeout}
	if size >= 0 && size <= memSpoolMax && c.mem.take(size) {
		return c.streamMem(ctx, f, repo, d, src, size)
	}
	sp, ok := c.store.(store.Spooler)
	if !ok || size < 0 {
		f.markReady(nil, size)
		return c.store.PutBlob(ctx, repo, d, size, src)
	}
	spool, err := sp.Spool(ctx, d, size)
	if err != nil {
		return err
	}
	f.markReady(spool, size)
	if err := spool.Fill(src, f.advance); err != nil {
		return readFailure(ctx, err)
	}
	return c.finishSpool(ctx, f, repo, src, spool)
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

// finishSpool ends a spool whose body was read: verify, let readers have
// the last byte, then commit at once. (Its bytes are in the page cache
// already; deferring the fsync of a large file measured slower than
// overlapping it with the client's last reads.)
func (c *Cache) finishSpool(ctx context.Context, f *fill, repo store.Repo, rc io.Closer, spool store.Spool) error {
	_ = rc.Close()
	if err := spool.Verify(); err != nil {
		return err
	}
	// Readers get the last byte now; making it durable is the fill's job.
	f.markVerified()
	f.endActive()
	return spool.Commit(ctx, repo)
}

// streamMem receives a small blob into memory, hashing what arrived in a
// second goroutine, then stores it once verified.
func (c *Cache) streamMem(ctx context.Context, f *fill, repo store.Repo, d digest.Digest, src io.ReadCloser, size int64) error {
	ms := newMemSpool(size, &c.mem)
	f.markReady(ms, size)
	h := d.Algorithm().Hash()
	chunks := make(chan []byte, 64)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range chunks {
			h.Write(b)
		}
	}()
	var written int64
	err := func() error {
		for written < size {
			n, rerr := src.Read(ms.buf[written:size])
			if n > 0 {
				chunks <- ms.buf[written : written+int64(n)]
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
	}()
	close(chunks)
	_ = src.Close()
	<-hashed
	if err != nil {
		return err
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return fmt.Errorf("%w: got %s, want %s", store.ErrDigestMismatch, got, d)
	}
	return c.verifiedThenStore(ctx, f, func() error {
		if vp, ok := c.store.(store.VerifiedPutter); ok {
			return vp.PutVerifiedBlob(ctx, repo, d, ms.buf)
		}
		return c.store.PutBlob(ctx, repo, d, size, bytes.NewReader(ms.buf))
	})
}

// watchedBody reads an upstream body, pushing back the idle watchdog on
// every read and failing once the fill's context ended.
type watchedBody struct {
	rc       io.ReadCloser
	ctx      context.Context
	watchdog *time.Timer
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

// defaultLeaseRecheck bounds each wait for another process's lease: the
// release is watched (Leaser.Released), and this slow look again is only
// the safety net for a lease that lapsed with its holder unannounced.
const defaultLeaseRecheck = 2 * time.Second

// awaitLease takes the cross-process fetch lease of d. While another
// process holds it, it waits for the blob to land in the shared store and
// then, when the sharing rule allows (shareStored), links it and finishes f
// without fetching (finished is true); content the other process stored
// for another registry is fetched here once the lease is free. Without a
// working lease service it lets the fill go ahead unleased: pulls never
// depend on NATS.
func (c *Cache) awaitLease(ctx context.Context, f *fill, repo store.Repo, d digest.Digest, sources []connector.Source) (release func(), finished bool) {
	key := "blob." + string(d.Algorithm()) + "." + d.Encoded()
	// shared finishes f when d is stored and may be linked into repo.
	shared := func() bool {
		if _, err := c.store.HasBlob(ctx, d); err != nil {
			return false
		}
		linked, err := c.shareStored(ctx, repo, d, sources)
		if err == nil && !linked {
			return false
		}
		f.setNotFetched()
		c.endFill(fillKey{repo.Registry, d}, f, err)
		return true
	}
	for {
		rel, ok, err := c.leases.Acquire(ctx, key)
		if err != nil {
			c.log.Warn("fetch lease unavailable; fetching without it", "digest", d, "error", err)
			return nil, false
		}
		if ok {
			if shared() { // stored meanwhile by the previous holder
				rel()
				return nil, true
			}
			return rel, false
		}
		// Another process holds it: wait for its release, then look again.
		if shared() {
			return nil, true
		}
		if err := c.waitLease(ctx, key); ctx.Err() != nil {
			c.endFill(fillKey{repo.Registry, d}, f, ctx.Err())
			return nil, true
		} else if err != nil {
			c.log.Warn("fetch lease unavailable; fetching without it", "digest", d, "error", err)
			return nil, false
		}
	}
}

// waitLease waits until key's holder released it, or for c.leaseRecheck
// at most. An error other than the recheck timing out is the lease service's.
func (c *Cache) waitLease(ctx context.Context, key string) error {
	wctx, cancel := context.WithTimeout(ctx, c.leaseRecheck)
	defer cancel()
	err := c.leases.Released(wctx, key)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return nil
	}
	return err
}

// fetch makes sure blob d of repo is in the store, fetching it through the
// connectors when needed and sharing any fill in flight. fetched reports
// whether this call brought the bytes from upstream (joining another
// caller's fill counts as present, so bytes are counted once).
func (c *Cache) fetch(ctx context.Context, m mode, repo store.Repo, d digest.Digest) (fetched bool, size int64, err error) {
	if n, err := c.store.StatBlob(ctx, repo, d); err == nil {
		return false, n, nil
	}
	sources := c.sources(m, repo)
	if len(sources) == 0 {
		return false, 0, fmt.Errorf("%w: %s", store.ErrBlobUnknown, d)
	}
	if linked, err := c.linkStored(ctx, repo, d, sources); err != nil || linked {
		if err != nil {
			return false, 0, err
		}
		n, err := c.store.StatBlob(ctx, repo, d)
		return false, n, err
	}
	if c.fills.get(fillKey{repo.Registry, d}) == nil {
		// A new fill for background work: clients first (priority.go).
		release, err := c.yield(ctx, m)
		if err != nil {
			return false, 0, err
		}
		defer release()
	}
	f, leader, err := c.shareFill(ctx, m, repo, d, sources)
	if err != nil {
		return false, 0, err
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return false, 0, ctx.Err()
	}
	if err := c.filled(ctx, f, repo, d); err != nil {
		return false, 0, err
	}
	n, err := c.store.StatBlob(ctx, repo, d)
	return leader && !f.wasNotFetched(), n, err
}

func resultOf(err error) string {
	if err != nil {
		return metrics.ResultError
	}
	return metrics.ResultOK
}
