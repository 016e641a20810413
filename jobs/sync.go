// Package jobs holds regwarm's units of work: syncing an image tree, the
// dangling-reference scan, integrity verification and tag refresh, and the
// reports they write.
package jobs

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// Syncer warms images: it resolves a manifest tree through the registry's
// connectors and fetches every blob the store lacks, verified.
type Syncer struct {
	regs  Registries
	cache *cache.Warming
}

// NewSyncer returns a Syncer of the registries regs over c, the
// pull-through cache.
func NewSyncer(regs Registries, c *cache.Cache) *Syncer {
	s := &Syncer{regs: regs}
	if c != nil {
		s.cache = c.Warming()
	}
	return s
}

// Target is a resolved sync request.
type Target struct {
	Repo      store.Repo
	Reference string        // tag or digest
	Blob      digest.Digest // only this blob, when set
	Platforms []string      // empty: all
	Referrers bool
	// Tag, with a digest Reference, is revalidated first so that it moves
	// at once (a webhook's image <repo>:<tag>@<digest>).
	Tag string
}

// NewTarget is reference in repository name of reg, with what reg's
// sync settings ask for (platforms, referrers).
func NewTarget(reg *config.Registry, name, reference string) Target {
	return Target{Repo: store.Repo{Registry: reg.Name, Name: name}, Reference: reference,
		Platforms: reg.Sync.Platforms, Referrers: reg.SyncReferrers()}
}

// Image renders the target as <registry>/<repo>:<tag> or @digest (the
// blob's digest for a blob target).
func (t Target) Image() string {
	if t.Blob != "" {
		return t.Repo.String() + "@" + t.Blob.String()
	}
	if ref.IsDigest(t.Reference) {
		if t.Tag != "" {
			return t.Repo.String() + ":" + t.Tag + "@" + t.Reference
		}
		return t.Repo.String() + "@" + t.Reference
	}
	return t.Repo.String() + ":" + t.Reference
}

// Request asks for an image to be synced, as a sync message or the CLI
// names it.
type Request struct {
	Image     string   // <registry>/<repo>… or <upstream host>/<repo>…
	Platforms []string // nil: the registry's sync.platforms
	Referrers *bool    // nil: the registry's sync.referrers
	Blob      string   // only this blob of Image's repository, when set
}

// Result is what one sync did.
type Result struct {
	Image        string // the target as Target.Image renders it
	Digest       string // the top manifest's (or the blob's) digest
	Manifests    int
	BlobsFetched int
	BlobsPresent int
	Bytes        int64 // fetched
}

// Resolve maps a request to a target: an image names a local registry, or
// an upstream host served by a registry's connector. Failures are permanent.
func (s *Syncer) Resolve(req Request) (Target, error) {
	img, err := ref.ParseImage(req.Image)
	if err != nil {
		return Target{}, err
	}
	var reg *config.Registry
	if img.Host != "" {
		r, ok := s.regs.RegistryForHost(img.Host)
		if !ok {
			return Target{}, fmt.Errorf("%w: no connector has host %q", ErrUnknownRegistry, img.Host)
		}
		reg = r
	} else {
		r, ok := s.regs.Registry(img.Registry)
		if !ok {
			return Target{}, fmt.Errorf("%w: no registry named %q", ErrUnknownRegistry, img.Registry)
		}
		reg = r
	}
	t := NewTarget(reg, img.Repo, img.Reference())
	if req.Platforms != nil {
		t.Platforms = req.Platforms
	}
	if req.Referrers != nil {
		t.Referrers = *req.Referrers
	}
	if req.Blob != "" {
		t.Blob = digest.Digest(req.Blob)
	}
	if img.Digest != "" && img.Tag != "" {
		t.Tag = img.Tag
	}
	return t, nil
}

// MissTarget is the target of a cache miss: manifest (or, with blob, the
// blob) d in repository name of the named registry.
func (s *Syncer) MissTarget(registry, name string, d digest.Digest, blob bool) (Target, error) {
	reg, ok := s.regs.Registry(registry)
	if !ok {
		return Target{}, fmt.Errorf("%w: no registry named %q", ErrUnknownRegistry, registry)
	}
	t := NewTarget(reg, name, d.String())
	if blob {
		t.Blob = d
	}
	return t, nil
}

// target is reference in repo with its registry's sync settings (none
// for a registry not configured).
func (s *Syncer) target(repo store.Repo, reference string) Target {
	if reg, ok := s.regs.Registry(repo.Registry); ok {
		return NewTarget(reg, repo.Name, reference)
	}
	return Target{Repo: repo, Reference: reference}
}

// tags lists the tags of repo, the connectors' included.
func (s *Syncer) tags(ctx context.Context, repo store.Repo) ([]string, error) {
	return s.cache.Tags(ctx, repo)
}

// maxDepth bounds referrers of referrers and nested indexes.
const maxDepth = 4

// Run syncs t and reports what it did. It is idempotent: content already
// stored is only counted.
func (s *Syncer) Run(ctx context.Context, t Target) (Result, error) {
	res := Result{Image: t.Image()}
	w := &walk{s: s, t: t, seen: map[digest.Digest]bool{}, blobs: map[digest.Digest]bool{}}
	var err error
	if t.Blob != "" {
		res.Digest = t.Blob.String()
		w.addBlob(t.Blob)
	} else {
		var top digest.Digest
		if t.Tag != "" {
			// The tag first: it moves before the blobs are fetched.
			err = s.moveTag(ctx, t)
		}
		if err == nil {
			top, err = s.resolve(ctx, t)
		}
		if err == nil {
			res.Digest = top.String()
			err = w.visit(ctx, top, 0)
		}
	}
	if err == nil {
		err = w.fetchBlobs(ctx)
	}
	res.Manifests = w.manifests
	res.BlobsFetched, res.BlobsPresent, res.Bytes = w.fetched, w.present, w.bytes
	return res, err
}

// tagSettle bounds how long a job waits for its upstream to show the
// notified digest under the notified tag: distribution announces a
// manifest push before it writes the tag.
const tagSettle = 3 * time.Second

// moveTag revalidates t.Tag until the connector shows it on t.Reference
// (or tagSettle passes: the tag moved on or went away since, and a later
// notification covers that; the digest is warmed all the same).
func (s *Syncer) moveTag(ctx context.Context, t Target) error {
	deadline := time.Now().Add(tagSettle)
	wait := 50 * time.Millisecond
	for {
		ti, err := s.cache.ResolveTag(ctx, t.Repo, t.Tag, true)
		switch {
		case err == nil && ti.Digest.String() == t.Reference:
			return nil
		case err != nil && !errors.Is(err, store.ErrTagUnknown):
			return err
		case time.Now().Add(wait).After(deadline):
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// resolve returns the digest of the target's top manifest, revalidating a
// tag with its connector whatever its age (a sync is explicit).
func (s *Syncer) resolve(ctx context.Context, t Target) (digest.Digest, error) {
	if ref.IsDigest(t.Reference) {
		return digest.Digest(t.Reference), nil
	}
	ti, err := s.cache.ResolveTag(ctx, t.Repo, t.Reference, true)
	if err != nil {
		return "", err
	}
	return ti.Digest, nil
}

type walk struct {
	s         *Syncer
	t         Target
	seen      map[digest.Digest]bool
	mu        sync.Mutex
	blobs     map[digest.Digest]bool
	order     []digest.Digest
	manifests int
	fetched   int
	present   int
	bytes     int64
}

func (w *walk) addBlob(d digest.Digest) {
	if !w.blobs[d] {
		w.blobs[d] = true
		w.order = append(w.order, d)
	}
}

// visit stores manifest d (through the cache) and walks what it references.
func (w *walk) visit(ctx context.Context, d digest.Digest, depth int) error {
	if w.seen[d] || depth > maxDepth {
		return nil
	}
	w.seen[d] = true
	m, err := w.s.cache.Manifest(ctx, w.t.Repo, d)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d, err)
	}
	w.manifests++
	p, err := manifest.Parse(m.MediaType, m.Data)
	if err != nil {
		return fmt.Errorf("manifest %s: %w: %w", d, ErrPermanent, err)
	}
	// What one manifest makes the sync do upstream is bounded by its
	// connector's max_manifest_entries.
	names, limit := w.limit(m.Source)
	if manifest.IsIndex(p.MediaType) {
		var children []ocispec.Descriptor
		for _, c := range p.Manifests {
			if platformWanted(w.t.Platforms, c.Platform) {
				children = append(children, c)
			}
		}
		if err := tooMany(d, "index entries", len(children), names, limit); err != nil {
			return err
		}
		for _, c := range children {
			if err := w.visit(ctx, c.Digest, depth+1); err != nil {
				return err
			}
		}
	} else {
		req := p.Required()
		if err := tooMany(d, "references (config and layers)", len(req), names, limit); err != nil {
			return err
		}
		for _, b := range req {
			w.addBlob(b.Digest)
		}
	}
	if w.t.Referrers {
		refs, err := w.s.cache.Referrers(ctx, w.t.Repo, d)
		if err != nil {
			return fmt.Errorf("referrers of %s: %w", d, err)
		}
		if err := tooMany(d, "referrers", len(refs), names, limit); err != nil {
			return err
		}
		for _, r := range refs {
			if err := w.visit(ctx, r.Digest, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// limit is manifestLimit for a manifest of the target's registry from
// source.
func (w *walk) limit(source string) ([]string, int) {
	reg, ok := w.s.regs.Registry(w.t.Repo.Registry)
	if !ok {
		return nil, math.MaxInt
	}
	return manifestLimit(w.s.regs, reg, source)
}

// tooMany is the sync's error for manifest d listing n of what (index
// entries, layers, referrers) where limit are allowed; nil when n is within
// it.
func tooMany(d digest.Digest, what string, n int, names []string, limit int) error {
	if n <= limit {
		return nil
	}
	return fmt.Errorf("manifest %s: %w: %d %s, more than max_manifest_entries (%d) of connector %s",
		d, ErrTooManyReferences, n, what, limit, strings.Join(names, ","))
}

// platformWanted reports whether an index entry matches the filter. Entries
// without a platform (attestations, artifacts) are always kept.
func platformWanted(want []string, p *ocispec.Platform) bool {
	if len(want) == 0 || p == nil {
		return true
	}
	for _, w := range want {
		if w == p.OS+"/"+p.Architecture || (p.Variant != "" && w == p.OS+"/"+p.Architecture+"/"+p.Variant) {
			return true
		}
	}
	return false
}

// fetchBlobs makes every collected blob present, a few at a time.
func (w *walk) fetchBlobs(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.s.parallelism(w.t.Repo.Registry))
	for _, d := range w.order {
		g.Go(func() error {
			fetched, n, err := w.s.cache.Fetch(gctx, w.t.Repo, d)
			if err != nil {
				return fmt.Errorf("blob %s: %w", d, err)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			if fetched {
				w.fetched++
				w.bytes += n
			} else {
				w.present++
			}
			return nil
		})
	}
	return g.Wait()
}

// parallelism is the first connector's concurrency (4 without connectors).
func (s *Syncer) parallelism(registry string) int {
	if r, ok := s.regs.Registry(registry); ok && len(r.Connectors) > 0 {
		if c, ok := s.regs.Connector(r.Connectors[0]); ok && c.Concurrency > 0 {
			return c.Concurrency
		}
	}
	return 4
}

// ErrorText is the error of a failed job as published: short, no secrets.
func ErrorText(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 500 {
		s = s[:500] + "…"
	}
	return s
}
