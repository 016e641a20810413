package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// StatBlob returns a blob's size: from the store, or from the first
// connector that has it (content already stored for another repository is
// then linked into this one). In a registry that accepts pushes the blob is
// fetched first: a pushing client told that a layer exists skips uploading
// it, so it must really be here.
func (c *Cache) StatBlob(ctx context.Context, repo store.Repo, d digest.Digest) (int64, error) {
	n, err := c.store.StatBlob(ctx, repo, d)
	if err == nil || !errors.Is(err, store.ErrBlobUnknown) {
		return n, err
	}
	sources := c.sources(repo)
	if len(sources) == 0 {
		return n, err
	}
	if reg := c.regs[repo.Registry]; reg != nil && reg.push {
		if _, _, err := c.headBlob(ctx, repo, d, sources); err != nil {
			return 0, err
		}
		_, n, err := c.Fetch(ctx, repo, d)
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

// linkStored links blob d into repo when its content is already stored
// (for another repository), no fill of it is running, and a connector
// confirms that repo has it upstream. It reports whether d is now linked.
func (c *Cache) linkStored(ctx context.Context, repo store.Repo, d digest.Digest, sources []connector.Source) (bool, error) {
	if _, err := c.store.HasBlob(ctx, d); err != nil || c.fills.get(fillKey{repo.Registry, d}) != nil {
		return false, nil
	}
	_, src, err := c.headBlob(ctx, repo, d, sources)
	if err != nil {
		return false, err
	}
	if err := c.store.LinkBlob(ctx, repo, d); err != nil {
		return false, err
	}
	c.log.Debug("blob linked", "registry", repo.Registry, "repo", repo.Name, "digest", d, "connector", src)
	return true, nil
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

// OpenBlob opens a blob from the store, or streams it from the first
// connector that has it while storing it. The fill is detached from the
// client: it completes even if the client goes away, and every concurrent
// reader shares it. The final byte is only handed out after the digest
// was verified, so no client ever receives a complete corrupt blob.
func (c *Cache) OpenBlob(ctx context.Context, repo store.Repo, d digest.Digest) (store.Blob, error) {
	b, err := c.store.OpenBlob(ctx, repo, d)
	if err == nil {
		c.count(ctx, repo.Registry, metrics.KindBlob, metrics.ResultHit)
		return b, nil
	}
	if !errors.Is(err, store.ErrBlobUnknown) {
		return nil, err
	}
	sources := c.sources(repo)
	if len(sources) == 0 {
		return nil, err
	}
	if linked, err := c.linkStored(ctx, repo, d, sources); err != nil {
		return nil, err
	} else if linked {
		if b, err := c.store.OpenBlob(ctx, repo, d); err == nil {
			c.count(ctx, repo.Registry, metrics.KindBlob, metrics.ResultHit)
			return b, nil
		}
	}
	c.count(ctx, repo.Registry, metrics.KindBlob, metrics.ResultMiss)
	f, _ := c.joinFill(ctx, repo, d, sources)
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r, ok := f.reader(ctx.Done()); ok {
		return r, nil
	}
	// No stream to share (failed, or unknown size): wait for the result.
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := f.result(); err != nil {
		return nil, err
	}
	return c.store.OpenBlob(ctx, repo, d)
}

// joinFill joins the fill of d in flight for repo's registry, or starts
// one (detached from ctx); leader reports whether this call started it.
func (c *Cache) joinFill(ctx context.Context, repo store.Repo, d digest.Digest, sources []connector.Source) (f *fill, leader bool) {
	f = c.fills.join(fillKey{repo.Registry, d}, func() *fill {
		leader = true
		f := newFill()
		c.work.Add(1)
		go func() { defer c.work.Done(); c.runFill(ctx, f, repo, d, sources) }()
		return f
	}, c.metrics.Coalesced.Inc)
	return f, leader
}

// runFill fetches a blob from the first source that has it into the store.
func (c *Cache) runFill(reqCtx context.Context, f *fill, repo store.Repo, d digest.Digest, sources []connector.Source) {
	ctx, cancel := c.detached(reqCtx)
	defer cancel()
	// A fill that finished just before this one started may have stored it.
	if _, err := c.store.StatBlob(ctx, repo, d); err == nil {
		f.setNotFetched()
		c.fills.finish(fillKey{repo.Registry, d}, f, nil)
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
		err = c.stream(ctx, cancel, f, repo, d, rc, size)
		_ = rc.Close()
		c.metrics.StoreWrites.WithLabelValues(resultOf(err)).Inc()
		if err == nil {
			c.log.Debug("blob cached", "registry", repo.Registry, "repo", repo.Name, "digest", d,
				"connector", src.Name(), "bytes", f.knownSize(), "duration", time.Since(start))
			c.miss(reqCtx, Miss{Registry: repo.Registry, Repository: repo.Name, Reference: d.String(),
				Digest: d, Kind: metrics.KindBlob, Connector: src.Name()})
			c.fills.finish(fillKey{repo.Registry, d}, f, nil)
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
	c.fills.finish(fillKey{repo.Registry, d}, f, lastErr)
}

// bufPool holds copy buffers for fills.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// stream copies rc into the store: through a spool that readers follow when
// the store supports it and the size is known, else with a plain PutBlob.
// A read that makes no progress for idleTimeout cancels the fill.
func (c *Cache) stream(ctx context.Context, cancel context.CancelFunc, f *fill, repo store.Repo, d digest.Digest, rc io.Reader, size int64) error {
	watchdog := time.AfterFunc(c.idleTimeout, cancel)
	defer watchdog.Stop()
	src := readerFunc(func(p []byte) (int, error) {
		n, err := rc.Read(p)
		watchdog.Reset(c.idleTimeout)
		if err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
		return n, err
	})
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
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := spool.Write(buf[:n]); err != nil {
				return err
			}
			f.advance(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("upstream stalled or fill timed out: %w", rerr)
			}
			return rerr
		}
	}
	if err := spool.Verify(); err != nil {
		return err
	}
	// Readers get the last byte now; making it durable is the fill's job.
	f.markVerified()
	return spool.Commit(ctx, repo)
}

type readerFunc func(p []byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// leasePoll is how often a fill waiting for another process looks again.
const leasePoll = 100 * time.Millisecond

// awaitLease takes the cross-process fetch lease of d. While another
// process holds it, it waits for the blob to land in the shared store and
// then finishes f without fetching (finished is true). Without a working
// lease service it lets the fill go ahead unleased: pulls never depend on
// NATS.
func (c *Cache) awaitLease(ctx context.Context, f *fill, repo store.Repo, d digest.Digest, sources []connector.Source) (release func(), finished bool) {
	key := "blob." + string(d.Algorithm()) + "." + d.Encoded()
	for {
		rel, ok, err := c.leases.Acquire(ctx, key)
		if err != nil {
			c.log.Warn("fetch lease unavailable; fetching without it", "digest", d, "error", err)
			return nil, false
		}
		if ok {
			if _, err := c.store.HasBlob(ctx, d); err != nil {
				return rel, false
			}
			rel() // stored meanwhile by the previous holder
		}
		for {
			if _, err := c.store.HasBlob(ctx, d); err == nil {
				f.setNotFetched()
				_, _, err := c.headBlob(ctx, repo, d, sources)
				if err == nil {
					err = c.store.LinkBlob(ctx, repo, d)
				}
				c.fills.finish(fillKey{repo.Registry, d}, f, err)
				return nil, true
			}
			held, err := c.leases.Held(ctx, key)
			if err != nil {
				return nil, false
			}
			if !held {
				break
			}
			select {
			case <-ctx.Done():
				c.fills.finish(fillKey{repo.Registry, d}, f, ctx.Err())
				return nil, true
			case <-time.After(leasePoll):
			}
		}
	}
}

// Fetch makes sure blob d of repo is in the store, fetching it through the
// connectors when needed and sharing any fill in flight. fetched reports
// whether this call brought the bytes from upstream (joining another
// caller's fill counts as present, so bytes are counted once).
func (c *Cache) Fetch(ctx context.Context, repo store.Repo, d digest.Digest) (fetched bool, size int64, err error) {
	if n, err := c.store.StatBlob(ctx, repo, d); err == nil {
		return false, n, nil
	}
	sources := c.sources(repo)
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
	f, leader := c.joinFill(ctx, repo, d, sources)
	select {
	case <-f.done:
	case <-ctx.Done():
		return false, 0, ctx.Err()
	}
	if err := f.result(); err != nil {
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
