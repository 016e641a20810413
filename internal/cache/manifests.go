package cache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// resolveTag resolves a tag: a pushed tag or a fresh one (younger than
// tag_ttl) from the store; else the connectors in order (a HEAD
// revalidates a cached tag, a GET fetches an unknown one); if every
// connector fails, the stale copy. With force, a connector's tag is
// revalidated even when it is younger than tag_ttl.
func (c *Cache) resolveTag(ctx context.Context, m mode, repo store.Repo, tag string, force bool) (store.TagInfo, error) {
	if pt, ok := c.pending.tag(repo, tag); ok {
		if reg := c.regs[repo.Registry]; !force && reg != nil && c.now().Sub(pt.info.Checked) < reg.ttl {
			c.count(m, repo.Registry, metrics.KindManifest, metrics.ResultHit)
			return pt.info, nil
		}
		// Revalidate what is stored, once the pending write is done.
		if err := pt.storeNow(ctx); err != nil {
			return store.TagInfo{}, err
		}
	}
	local, lerr := c.store.Tag(ctx, repo, tag)
	if lerr != nil && !errors.Is(lerr, store.ErrTagUnknown) && !errors.Is(lerr, store.ErrNameUnknown) {
		return local, lerr
	}
	have := lerr == nil
	reg := c.regs[repo.Registry]
	if reg == nil || (have && (local.Source == "" || (!force && c.now().Sub(local.Checked) < reg.ttl))) {
		return local, lerr
	}
	sources := c.sources(m, repo)
	if len(sources) == 0 {
		if have {
			return local, nil
		}
		return local, lerr
	}
	key := "tag\x00" + repo.String() + "\x00" + tag
	if force {
		key += "\x00force" // a forced revalidation never takes an unforced flight's answer
	}
	v, err := c.shared(ctx, key, func(ctx context.Context) (any, error) {
		// A flight that finished just before this one started may have
		// resolved it already (pending write-behind, or stored since).
		if pt, ok := c.pending.tag(repo, tag); ok && !force && c.now().Sub(pt.info.Checked) < reg.ttl {
			return tagResult{info: pt.info}, nil
		}
		if cur, err := c.store.Tag(ctx, repo, tag); err == nil && !force && cur.Source != "" && c.now().Sub(cur.Checked) < reg.ttl {
			return tagResult{info: cur}, nil
		}
		return c.fetchTag(ctx, m, repo, tag, sources, local, have)
	})
	if err == nil {
		r := v.(tagResult)
		if force {
			c.pending.supersede(repo, tag, r.info)
		}
		if r.fetched {
			c.count(m, repo.Registry, metrics.KindManifest, metrics.ResultMiss)
		}
		return r.info, nil
	}
	if have && !connector.IsNotFound(err) && ctx.Err() == nil {
		c.count(m, repo.Registry, metrics.KindManifest, metrics.ResultStale)
		c.log.Warn("serving stale tag", "registry", repo.Registry, "repo", repo.Name, "tag", tag, "error", err)
		return local, nil
	}
	if connector.IsNotFound(err) {
		return store.TagInfo{}, fmt.Errorf("%w: %s", store.ErrTagUnknown, tag)
	}
	return store.TagInfo{}, err
}

// tagResult is what fetchTag found; fetched says the manifest came from
// upstream (a miss) rather than being confirmed.
type tagResult struct {
	info    store.TagInfo
	fetched bool
}

// fetchTag asks the connectors in order for tag: a HEAD when a copy is
// stored (have), fetching the manifest only when the digest changed.
func (c *Cache) fetchTag(ctx context.Context, m mode, repo store.Repo, tag string, sources []connector.Source, local store.TagInfo, have bool) (tagResult, error) {
	var lastErr error
	for _, src := range sources {
		if have {
			desc, err := src.HeadManifest(ctx, repo.Name, tag)
			if err != nil {
				lastErr = keepFailure(lastErr, err)
				continue
			}
			if desc.Digest == local.Digest {
				info := store.TagInfo{Digest: local.Digest, Source: src.Name(), Checked: c.now()}
				if err := c.store.SetTag(ctx, repo, tag, info); err != nil {
					return tagResult{}, err
				}
				return tagResult{info: info}, nil
			}
			if _, err := c.fetchManifest(ctx, m, repo, src, desc.Digest.String(), tag); err != nil {
				lastErr = keepFailure(lastErr, err)
				continue
			}
			c.miss(ctx, m, Miss{Registry: repo.Registry, Repository: repo.Name, Reference: tag,
				Digest: desc.Digest, Kind: metrics.KindManifest, Connector: src.Name()})
			return tagResult{store.TagInfo{Digest: desc.Digest, Source: src.Name(), Checked: c.now()}, true}, nil
		}
		mf, err := c.fetchManifest(ctx, m, repo, src, tag, tag)
		if err != nil {
			lastErr = keepFailure(lastErr, err)
			continue
		}
		c.miss(ctx, m, Miss{Registry: repo.Registry, Repository: repo.Name, Reference: tag,
			Digest: mf.Digest, Kind: metrics.KindManifest, Connector: src.Name()})
		return tagResult{store.TagInfo{Digest: mf.Digest, Source: src.Name(), Checked: c.now()}, true}, nil
	}
	return tagResult{}, lastErr
}

// keepFailure prefers a real failure over "not found" so that a 404 from one
// connector does not hide another connector being down.
func keepFailure(prev, err error) error {
	if prev == nil || connector.IsNotFound(prev) {
		return err
	}
	return prev
}

// fetchManifest gets reference from src, validates it and stores it in repo
// (with tag, when non-empty).
func (c *Cache) fetchManifest(ctx context.Context, md mode, repo store.Repo, src connector.Source, reference, tag string) (store.Manifest, error) {
	end := func() {}
	if md.client {
		end = c.active.begin()
		defer c.prio.client()()
	}
	um, err := src.GetManifest(ctx, repo.Name, reference)
	end()
	if err != nil {
		return store.Manifest{}, err
	}
	p, err := manifest.Parse(um.MediaType, um.Data)
	if err != nil {
		return store.Manifest{}, &connector.Error{Connector: src.Name(), Kind: connector.KindManifest,
			Message: "upstream sent an unusable manifest", Err: err}
	}
	m := store.Manifest{MediaType: p.MediaType, Digest: um.Digest, Data: um.Data, Source: src.Name()}
	opts := store.PutManifestOptions{Tag: tag, Source: src.Name(), Subject: p.Subject,
		Referrer: ocispec.Descriptor{MediaType: p.MediaType, ArtifactType: p.EffectiveArtifactType(), Annotations: p.Annotations}}
	if md.client {
		c.prio.fetchedManifest(repo, um.Digest, p)
		c.covered.add(repo, p, time.Now())
		c.storeManifestSoon(ctx, repo, m, opts)
		if p.Config != nil {
			c.readAhead(ctx, md, repo, *p.Config)
		}
		return m, nil
	}
	if err := c.store.PutManifest(ctx, repo, m, opts); err != nil {
		return store.Manifest{}, err
	}
	c.log.Debug("manifest cached", "registry", repo.Registry, "repo", repo.Name, "digest", m.Digest, "connector", src.Name())
	return m, nil
}

// storeManifestSoon answers a client's manifest from the verified bytes
// and stores it write-behind; until then Tag and Manifest find it pending.
// A tag that was pushed or resolved again meanwhile is left as it is.
func (c *Cache) storeManifestSoon(ctx context.Context, repo store.Repo, m store.Manifest, opts store.PutManifestOptions) {
	tag := opts.Tag
	info := store.TagInfo{Digest: m.Digest, Source: opts.Source, Checked: c.now()}
	pt := c.pending.add(repo, m, opts, info)
	opts.Tag = ""
	c.metrics.PendingWrites.Inc()
	c.work.Add(1)
	go func() {
		defer c.work.Done()
		defer c.metrics.PendingWrites.Dec()
		wctx, cancel := c.detached(ctx)
		defer cancel()
		defer c.pending.remove(repo, m.Digest, tag, pt)
		var asked <-chan struct{}
		if pt != nil {
			asked = pt.urgent
		}
		c.writeSoon(wctx, asked)
		err := c.store.PutManifest(wctx, repo, m, opts)
		if err == nil && tag != "" {
			if cur, terr := c.store.Tag(wctx, repo, tag); terr != nil || (cur.Source != "" && cur.Checked.Before(info.Checked)) {
				err = c.store.SetTag(wctx, repo, tag, info)
			}
		}
		if err != nil {
			c.log.Warn("storing a fetched manifest failed; it is fetched again when asked for", "registry", repo.Registry,
				"repo", repo.Name, "digest", m.Digest, "error", err)
			return
		}
		c.log.Debug("manifest cached", "registry", repo.Registry, "repo", repo.Name, "digest", m.Digest, "connector", opts.Source)
	}()
}

// localManifest returns a manifest fetched already: pending its
// write-behind, or from the store.
func (c *Cache) localManifest(ctx context.Context, repo store.Repo, d digest.Digest) (store.Manifest, error) {
	if m, ok := c.pending.manifest(repo, d); ok {
		return m, nil
	}
	return c.store.Manifest(ctx, repo, d)
}

// manifest returns a manifest by digest, from the store or, on a miss,
// from the connectors (digests are immutable: never revalidated).
func (c *Cache) manifest(ctx context.Context, md mode, repo store.Repo, d digest.Digest) (store.Manifest, error) {
	m, err := c.localManifest(ctx, repo, d)
	if err == nil {
		c.count(md, repo.Registry, metrics.KindManifest, metrics.ResultHit)
		if md.client {
			c.prio.servedManifest(repo, d)
		}
		return m, nil
	}
	sources := c.sources(md, repo)
	corrupt := errors.Is(err, store.ErrCorrupt)
	if corrupt && len(sources) > 0 {
		err = c.quarantineManifest(ctx, repo, d, err)
	}
	if !errors.Is(err, store.ErrManifestUnknown) || len(sources) == 0 {
		return m, err
	}
	c.count(md, repo.Registry, metrics.KindManifest, metrics.ResultMiss)
	key := "manifest\x00" + repo.String() + "\x00" + d.String()
	if c.calls.get(key) == nil {
		release, err := c.yield(ctx, md) // background work: clients first
		if err != nil {
			return store.Manifest{}, err
		}
		defer release()
	}
	v, ferr := c.shared(ctx, key, func(ctx context.Context) (any, error) {
		// A flight that finished just before this one started may have
		// fetched it.
		if m, err := c.localManifest(ctx, repo, d); err == nil {
			return m, nil
		}
		var lastErr error
		for _, src := range sources {
			m, err := c.fetchManifest(ctx, md, repo, src, d.String(), "")
			if err == nil {
				c.miss(ctx, md, Miss{Registry: repo.Registry, Repository: repo.Name, Reference: d.String(),
					Digest: d, Kind: metrics.KindManifest, Connector: src.Name()})
				return m, nil
			}
			lastErr = keepFailure(lastErr, err)
		}
		return nil, lastErr
	})
	if ferr != nil {
		if corrupt {
			// Still our fault: the stored copy was corrupt and no
			// connector has it (any more).
			return store.Manifest{}, fmt.Errorf("%w: %s: fetching it again failed: %w", store.ErrCorrupt, d, ferr)
		}
		if connector.IsNotFound(ferr) {
			// Kept wrapped: an excluded repository is NAME_UNKNOWN.
			return store.Manifest{}, fmt.Errorf("%w: %s: %w", store.ErrManifestUnknown, d, ferr)
		}
		return store.Manifest{}, ferr
	}
	return v.(store.Manifest), nil
}

// quarantineManifest moves a stored manifest whose bytes no longer hash to
// d aside, so that the caller fetches it again from a connector. It returns
// a store.ErrManifestUnknown error when the content is gone, else cause.
func (c *Cache) quarantineManifest(ctx context.Context, repo store.Repo, d digest.Digest, cause error) error {
	q, ok := c.store.(store.Quarantiner)
	if !ok {
		return cause
	}
	path, err := q.Quarantine(ctx, d)
	if err != nil && !errors.Is(err, store.ErrBlobUnknown) {
		c.log.Error("quarantining a corrupt manifest failed", "registry", repo.Registry, "repo", repo.Name,
			"digest", d, "error", err)
		return cause
	}
	if err == nil && path == "" {
		return cause // intact after all (replaced meanwhile): the caller reports the read
	}
	c.log.Warn("corrupt manifest quarantined; fetching it again", "registry", repo.Registry, "repo", repo.Name,
		"digest", d, "path", path)
	return fmt.Errorf("%w: %s: quarantined as corrupt", store.ErrManifestUnknown, d)
}
