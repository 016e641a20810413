package cache

import (
	"context"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// Two views of one cache. The view a caller reads through says how the
// cache works for it; nothing is read from the context.
//
//   - Serving (the registry API): content fetched for a client is answered
//     as soon as it is verified and stored write-behind (writebehind.go),
//     client misses hold background fetches back (priority.go), misses are
//     published, and each request counts one cache result per kind.
//   - Warming (workers, scheduled jobs): content is stored before a call
//     returns, new upstream fetches wait for clients first, nothing is
//     counted as a client pull and no miss is published.

// mode is how the cache works for the caller of a view.
type mode struct {
	client    bool   // a client request (Serving), else background work (Warming)
	tally     *tally // counts the request's cache results (nil: not counted)
	requestID string // the client request's id, carried into miss events
}

// tally records which kinds of cache result a client request has counted.
type tally struct{ manifest, blob atomic.Bool }

// first reports whether kind is counted now, for the first time in the
// request (never with a nil tally).
func (t *tally) first(kind string) bool {
	if t == nil {
		return false
	}
	if kind == metrics.KindBlob {
		return t.blob.CompareAndSwap(false, true)
	}
	return t.manifest.CompareAndSwap(false, true)
}

// Serving is the cache as the registry API reads through it; get it with
// Cache.Serving.
type Serving struct{ c *Cache }

// Serving returns the view the registry API reads through.
func (c *Cache) Serving() *Serving { return &Serving{c: c} }

// Request returns the reads of one client request: its cache results are
// counted once per kind and its misses carry id (may be "").
func (s *Serving) Request(id string) store.Reader {
	r := &request{}
	r.view = view{c: s.c, m: mode{client: true, tally: &r.tally, requestID: id}}
	return &r.view
}

// request is a client request's view and tally, allocated together.
type request struct {
	view  view
	tally tally
}

// Warming is the cache as workers and scheduled jobs use it; get it with
// Cache.Warming.
type Warming struct{ view }

// Warming returns the view of background work.
func (c *Cache) Warming() *Warming { return c.warming }

// view reads through the cache in one mode.
type view struct {
	c *Cache
	m mode
}

var (
	_ store.Reader = (*view)(nil)
	_ store.Reader = (*Warming)(nil)
)

// StatBlob returns a blob's size: from the store, or from the first
// connector that has it (see Cache.statBlob).
func (v *view) StatBlob(ctx context.Context, repo store.Repo, d digest.Digest) (int64, error) {
	return v.c.statBlob(ctx, v.m, repo, d)
}

// OpenBlob opens a blob from the store, or streams it from the first
// connector that has it while storing it (see Cache.openBlob).
func (v *view) OpenBlob(ctx context.Context, repo store.Repo, d digest.Digest) (store.Blob, error) {
	return v.c.openBlob(ctx, v.m, repo, d)
}

// Manifest returns a manifest by digest, from the store or, on a miss,
// from the connectors.
func (v *view) Manifest(ctx context.Context, repo store.Repo, d digest.Digest) (store.Manifest, error) {
	return v.c.manifest(ctx, v.m, repo, d)
}

// Tag resolves a tag (see Cache.resolveTag).
func (v *view) Tag(ctx context.Context, repo store.Repo, tag string) (store.TagInfo, error) {
	return v.c.resolveTag(ctx, v.m, repo, tag, false)
}

// ResolveTag is Tag; with force, a connector's tag is revalidated even
// when it is younger than tag_ttl (sync and tag refresh use that).
func (v *view) ResolveTag(ctx context.Context, repo store.Repo, tag string, force bool) (store.TagInfo, error) {
	return v.c.resolveTag(ctx, v.m, repo, tag, force)
}

// Tags lists the union of local tags and the first connector's tags that
// answers.
func (v *view) Tags(ctx context.Context, repo store.Repo) ([]string, error) {
	return v.c.tags(ctx, v.m, repo)
}

// Referrers lists local referrers of d plus those of the first connector
// that answers.
func (v *view) Referrers(ctx context.Context, repo store.Repo, d digest.Digest) ([]ocispec.Descriptor, error) {
	return v.c.referrers(ctx, v.m, repo, d)
}

// Fetch makes sure blob d of repo is in the store, fetching it through the
// connectors when needed; fetched reports whether this call brought the
// bytes from upstream (see Cache.fetch).
func (v *view) Fetch(ctx context.Context, repo store.Repo, d digest.Digest) (fetched bool, size int64, err error) {
	return v.c.fetch(ctx, v.m, repo, d)
}

// Source returns the connector named name, if it is configured, as this
// view reads it.
func (v *view) Source(name string) (connector.Source, bool) {
	for _, r := range v.c.regs {
		set := r.warming
		if v.m.client {
			set = r.serving
		}
		for _, s := range set {
			if s.Name() == name {
				return s, true
			}
		}
	}
	return nil, false
}
