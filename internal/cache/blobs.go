package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/cache/fill"
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
	if f := c.fills.Get(fill.Key{Registry: repo.Registry, Digest: d}); f != nil {
		if err := f.WaitStarted(ctx); err != nil {
			return 0, err
		}
		if size := f.Size(); size >= 0 {
			return size, nil
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
	if _, err := c.store.HasBlob(ctx, d); err != nil || c.fills.Get(fill.Key{Registry: repo.Registry, Digest: d}) != nil {
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
// connector that has it while storing it. The fill (package fill) is
// detached from the client: it completes even if the client goes away,
// and every concurrent reader shares it. The final byte is only handed out
// after the digest was verified, so no client ever receives a complete
// corrupt blob. Content stored for another repository is linked by the
// fill when the sharing rule allows (share.go), and counted as a hit.
func (c *Cache) openBlob(ctx context.Context, m mode, repo store.Repo, d digest.Digest) (store.Blob, error) {
	b, err := c.store.OpenBlob(ctx, repo, d)
	if err == nil {
		c.count(m, repo.Registry, metrics.KindBlob, metrics.ResultHit)
		if m.client {
			c.prio.servedBlob(repo, d)
		}
		return b, nil
	}
	if !errors.Is(err, store.ErrBlobUnknown) {
		return nil, err
	}
	sources := c.sources(m, repo)
	if len(sources) == 0 {
		return nil, err
	}
	result := metrics.ResultMiss
	defer func() { c.count(m, repo.Registry, metrics.KindBlob, result) }()
	endClient := func() {}
	if m.client {
		endClient = c.prio.client() // until the client has read the fill
	}
	defer func() { endClient() }()
	f, _, err := c.shareFill(ctx, m, repo, d, sources)
	if err != nil {
		return nil, err
	}
	if err := f.WaitStarted(ctx); err != nil {
		return nil, err
	}
	if r, ok := f.Reader(ctx.Done()); ok {
		endActive, endReader := func() {}, endClient
		if m.client {
			endActive = c.active.begin()
		}
		endClient = func() {}
		if f.Repo() != repo {
			c.linkWhenStored(ctx, f, repo, d) // the reader may finish before the write
		}
		return &followed{Reader: r, onClose: func() {
			endActive()
			endReader()
			if m.client {
				c.prio.servedBlob(repo, d)
			}
		}}, nil
	}
	// No stream to follow (stored already, failed, or unknown size): wait
	// for the result.
	select {
	case <-f.Done():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := c.filled(ctx, f, repo, d); err != nil {
		return nil, err
	}
	if !f.Fetched() {
		result = metrics.ResultHit // stored already, linked without a fetch
	}
	b, err = c.store.OpenBlob(ctx, repo, d)
	if err == nil && m.client {
		endClient()
		c.prio.servedBlob(repo, d)
	}
	return b, err
}

// followed is a client's reader of a fill; Close also ends the client's
// share of cold work and of client priority.
type followed struct {
	*fill.Reader
	onClose func()
	once    sync.Once
}

// Close closes the reader.
func (b *followed) Close() error {
	err := b.Reader.Close()
	b.once.Do(b.onClose)
	return err
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
func (c *Cache) joinFill(ctx context.Context, m mode, repo store.Repo, d digest.Digest, sources []connector.Source) (f *fill.Fill, leader bool) {
	f, leader = c.fills.Join(ctx, fill.Job{
		Repo: repo, Digest: d, Sources: sources, Client: m.client,
		// The fill's one look at the store found d's content: linked in
		// repo already (a fill that ended just before), or stored for
		// another repository and shareable (share.go).
		Adopt: func(ctx context.Context) (bool, error) {
			if _, err := c.store.StatBlob(ctx, repo, d); err == nil {
				return true, nil
			}
			return c.shareStored(ctx, repo, d, sources)
		},
		Fetched: func(src string) {
			c.miss(context.WithoutCancel(ctx), m, Miss{Registry: repo.Registry, Repository: repo.Name,
				Reference: d.String(), Digest: d, Kind: metrics.KindBlob, Connector: src})
		},
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
func (c *Cache) shareFill(ctx context.Context, m mode, repo store.Repo, d digest.Digest, sources []connector.Source) (f *fill.Fill, leader bool, err error) {
	f, leader = c.joinFill(ctx, m, repo, d, sources)
	if leader || f.Repo() == repo {
		return f, leader, nil
	}
	if _, _, err := c.headBlob(ctx, repo, d, sources); err != nil {
		return nil, false, err
	}
	return f, false, nil
}

// filled returns the result of the ended fill f, with d linked into repo
// when f stored it for another repository.
func (c *Cache) filled(ctx context.Context, f *fill.Fill, repo store.Repo, d digest.Digest) error {
	if err := f.Err(); err != nil || f.Repo() == repo {
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
func (c *Cache) linkWhenStored(ctx context.Context, f *fill.Fill, repo store.Repo, d digest.Digest) {
	c.work.Add(1)
	go func() {
		defer c.work.Done()
		<-f.Done()
		_ = c.filled(context.WithoutCancel(ctx), f, repo, d)
	}()
}

// fetch makes sure blob d of repo is in the store, fetching it through the
// connectors when needed and sharing any fill in flight. fetched reports
// whether this call brought the bytes from upstream (joining another
// caller's fill, or finding d stored, counts as present, so bytes are
// counted once).
func (c *Cache) fetch(ctx context.Context, m mode, repo store.Repo, d digest.Digest) (fetched bool, size int64, err error) {
	if n, err := c.store.StatBlob(ctx, repo, d); err == nil {
		return false, n, nil
	}
	sources := c.sources(m, repo)
	if len(sources) == 0 {
		return false, 0, fmt.Errorf("%w: %s", store.ErrBlobUnknown, d)
	}
	if c.fills.Get(fill.Key{Registry: repo.Registry, Digest: d}) == nil {
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
	if !m.client && f.Client() {
		c.hurryFill(ctx, m, f)
	}
	select {
	case <-f.Done():
	case <-ctx.Done():
		return false, 0, ctx.Err()
	}
	if err := c.filled(ctx, f, repo, d); err != nil {
		return false, 0, err
	}
	n, err := c.store.StatBlob(ctx, repo, d)
	return leader && f.Fetched(), n, err
}

// hurryFill has the write-behind of a client's fill f, which background
// work joined (verified and held in memory until a pause in client
// traffic), go now, once clients leave background work room (priority.go);
// it waits for f to end.
func (c *Cache) hurryFill(ctx context.Context, m mode, f *fill.Fill) {
	select {
	case <-f.Done():
		return
	default:
	}
	release, err := c.yield(ctx, m)
	if err != nil {
		return // the caller sees ctx end
	}
	release()
	c.hurry.Add(1)
	defer c.hurry.Add(-1)
	c.active.notify() // write-behind waiters look again
	select {
	case <-f.Done():
	case <-ctx.Done():
	}
}

func resultOf(err error) string {
	if err != nil {
		return metrics.ResultError
	}
	return metrics.ResultOK
}
