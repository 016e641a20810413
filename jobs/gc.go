package jobs

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
)

// JobGC is the retention and garbage-collection job.
const JobGC = "gc"

// Garbage-collection reasons besides the retention ones (ReasonOverBudget,
// ReasonUnpulled) and ReasonUnreferenced.
const (
	ReasonUntagged = "untagged" // a manifest no tag, index or pull reaches
)

// ErrNoCollector: the store cannot list and remove content online.
var ErrNoCollector = errors.New("the store does not support garbage collection")

// GC applies each registry's retention and then removes what nothing
// references (docs/gc.md). It runs online: the store's Collector re-checks
// every item's last use as it removes it.
type GC struct {
	cfg    *config.Config
	st     store.Store
	col    store.Collector
	log    *slog.Logger
	delay  time.Duration
	dryRun bool
	now    func() time.Time
	free   int64 // bytes to evict beyond the budgets (disk watermark)
}

// GCOption configures a GC.
type GCOption func(*GC)

// WithGCDryRun lists what would go without removing anything.
func WithGCDryRun(on bool) GCOption { return func(g *GC) { g.dryRun = on } }

// WithGCDelay sets the delay (default jobs.gc.delay).
func WithGCDelay(d time.Duration) GCOption { return func(g *GC) { g.delay = d } }

// WithGCClock sets the clock.
func WithGCClock(now func() time.Time) GCOption { return func(g *GC) { g.now = now } }

// WithGCFree asks the run to evict retention-managed images, least
// recently used first across registries, until n more bytes are freed
// than the budgets alone free (the disk watermark).
func WithGCFree(n int64) GCOption { return func(g *GC) { g.free = n } }

// NewGC returns the gc job over st, which must implement store.Collector.
func NewGC(cfg *config.Config, st store.Store, log *slog.Logger, opts ...GCOption) (*GC, error) {
	col, ok := st.(store.Collector)
	if !ok {
		return nil, ErrNoCollector
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &GC{cfg: cfg, st: st, col: col, log: log, delay: cfg.Jobs.GC.Delay.D(), dryRun: cfg.Jobs.GC.DryRun, now: time.Now}
	for _, o := range opts {
		o(g)
	}
	return g, nil
}

// dkey is a digest as a compact, fixed-size map key: the raw bytes of a
// sha256, the sha256 of the digest string for other algorithms.
type dkey [32]byte

func key(d digest.Digest) dkey {
	var k dkey
	if d.Algorithm() == digest.SHA256 {
		if n, err := hex.Decode(k[:], []byte(d.Encoded())); err == nil && n == len(k) {
			return k
		}
	}
	return sha256.Sum256([]byte(d))
}

type set map[dkey]struct{}

func (s set) has(d digest.Digest) bool { _, ok := s[key(d)]; return ok }
func (s set) add(d digest.Digest)      { s[key(d)] = struct{}{} }

// content is a stored blob as the run saw it at the start, and the number
// (from 1) of the last registry whose remaining manifests reach it (0:
// none so far): a registry's distinct bytes are counted as it marks,
// without a set of its own.
type content struct {
	size     int64
	lastUsed int64 // Unix nanoseconds
	reg      int32
	// inv and id: its index in retention's inventory number inv (from
	// 1), see blobIndex.
	inv, id int32
}

// gcRun is one run's state: digest sets and sizes, no manifest bodies.
type gcRun struct {
	*GC
	cutoff     time.Time
	rep        *Report
	blobs      map[dkey]content       // what remaining manifests reach is marked in it
	other      map[dkey]digest.Digest // digests of blobs not in sha256, by key
	regNum     int32                  // number of the registry being marked
	invNum     int32                  // number of the retention inventory being taken
	regAfter   int64                  // its distinct bytes so far
	reasons    map[dkey]string        // content of images retention removed: their reason
	owner      map[dkey]string        // registry a removed blob was last linked or referenced in
	removedMan set                    // manifests removed (their content is not listed again)
	plans      map[string]*regPlan
	unreadable int // kept manifests that could not be read: nothing is removed
}

// regPlan is what retention removes from one registry.
type regPlan struct {
	tags map[store.Repo]map[string]Removal // tag images
	// content is what the removed images (tags, and manifests pulled by
	// digest) of each repository reach: no pull record keeps it.
	content map[store.Repo]set
}

// Run runs gc once and returns its report.
func (g *GC) Run(ctx context.Context) (*Report, error) {
	started := g.now().UTC()
	r := &gcRun{GC: g, cutoff: started.Add(-g.delay), blobs: map[dkey]content{}, other: map[dkey]digest.Digest{},
		reasons: map[dkey]string{}, owner: map[dkey]string{}, removedMan: set{}, plans: map[string]*regPlan{}}
	r.rep = &Report{Version: ReportVersion, Job: JobGC, Started: started, Problems: []Problem{},
		GC: &GCSummary{ByRegistry: map[string]RegistryBytes{}}, Removed: []Removed{}, DryRun: g.dryRun}
	if !g.dryRun {
		n, err := g.col.RecoverRemovals(ctx)
		if err != nil {
			return nil, err
		}
		r.rep.GC.Recovered = n
	}
	if err := g.col.CollectBlobs(ctx, func(e store.Entry) error {
		k := key(e.Digest)
		r.blobs[k] = content{size: e.Size, lastUsed: e.LastUsed.UnixNano()}
		if e.Digest.Algorithm() != digest.SHA256 {
			r.other[k] = e.Digest
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list blobs: %w", err)
	}
	// Retention's inventories index into the blob map and take sizes from
	// it (content stored since the listing counts nothing yet): no stat
	// per blob, no second digest map.
	if err := r.planRetention(ctx); err != nil {
		return nil, err
	}
	if err := r.registries(ctx); err != nil {
		return nil, err
	}
	if err := r.sweepBlobs(ctx); err != nil {
		return nil, err
	}
	r.rep.Finished = g.now().UTC()
	return r.rep, nil
}

// blobIndex keeps the current inventory's indexes of listed blobs in the
// run's blob map.
type blobIndex struct{ r *gcRun }

func (b blobIndex) index(k dkey) (int32, int64, bool) {
	c, ok := b.r.blobs[k]
	if !ok {
		return -1, 0, false
	}
	if c.inv != b.r.invNum {
		return -1, c.size, true
	}
	return c.id, c.size, true
}

func (b blobIndex) setIndex(k dkey, i int32) {
	c := b.r.blobs[k]
	c.inv, c.id = b.r.invNum, i
	b.r.blobs[k] = c
}

// planRetention plans each configured registry's retention, and the
// eviction the disk watermark asks for.
func (r *gcRun) planRetention(ctx context.Context) error {
	type candidate struct {
		reg *regPlan
		tab *Table
		im  *Image
	}
	var extra []candidate // removable images retention keeps, for the watermark
	freed := int64(0)
	for _, reg := range r.cfg.Registries {
		pol := reg.Retention
		if pol == nil || (pol.MaxBytes <= 0 && pol.UnpulledFor <= 0 && r.free <= 0) {
			continue
		}
		r.invNum++
		inv, err := inventoryOf(ctx, r.st, reg.Name, blobIndex{r})
		if err != nil {
			return fmt.Errorf("retention of %s: %w", reg.Name, err)
		}
		plan := PlanRetention(pol, inv.Table, inv.Images, inv.Loose, r.now())
		rp := &regPlan{tags: map[store.Repo]map[string]Removal{}, content: map[store.Repo]set{}}
		r.plans[reg.Name] = rp
		removed := map[*Image]bool{}
		for _, rm := range plan.Removals {
			r.planRemoval(rp, inv.Table, rm)
			removed[rm.Image] = true
			freed += rm.Bytes
		}
		if r.free > 0 {
			for _, im := range inv.Images {
				if !removed[im] && !pol.Keeps(im.Repo.Name, im.Tag) && (pol.Pushed || !im.Pushed) {
					extra = append(extra, candidate{rp, inv.Table, im})
				}
			}
		}
	}
	if need := r.free - freed; need > 0 && len(extra) > 0 {
		// Least recently used first, across registries. Shared content is
		// counted in each image: an estimate on the safe side of freeing
		// too little, corrected by the next watermark check.
		slices.SortStableFunc(extra, func(a, b candidate) int {
			return cmp.Or(a.im.LastUsed().Compare(b.im.LastUsed()), cmp.Compare(a.im.Repo.String(), b.im.Repo.String()), cmp.Compare(a.im.Tag, b.im.Tag))
		})
		for _, c := range extra {
			if need <= 0 {
				break
			}
			var n int64
			for _, i := range c.im.Content {
				if _, ok := r.reasons[c.tab.keys[i]]; !ok {
					n += c.tab.Size(i)
				}
			}
			r.planRemoval(c.reg, c.tab, Removal{Image: c.im, Reason: ReasonOverBudget, Bytes: n})
			need -= n
		}
	}
	return nil
}

func (r *gcRun) planRemoval(rp *regPlan, tab *Table, rm Removal) {
	im := rm.Image
	if im.Tag != "" {
		if rp.tags[im.Repo] == nil {
			rp.tags[im.Repo] = map[string]Removal{}
		}
		rp.tags[im.Repo][im.Tag] = rm
	}
	if rp.content[im.Repo] == nil {
		rp.content[im.Repo] = set{}
	}
	for _, i := range im.Content {
		k := tab.keys[i]
		rp.content[im.Repo][k] = struct{}{}
		if _, ok := r.reasons[k]; !ok {
			r.reasons[k] = rm.Reason
		}
	}
}

// registries marks and sweeps every registry in the store (configured or
// not: what an unconfigured one references stays too).
func (r *gcRun) registries(ctx context.Context) error {
	var repos []store.Repo
	if err := r.st.Repositories(ctx, "", func(repo store.Repo) error { repos = append(repos, repo); return nil }); err != nil {
		return fmt.Errorf("list repositories: %w", err)
	}
	for _, reg := range r.cfg.Registries {
		r.rep.GC.ByRegistry[reg.Name] = RegistryBytes{}
	}
	for i := 0; i < len(repos); {
		j := i
		for j < len(repos) && repos[j].Registry == repos[i].Registry {
			j++
		}
		if err := r.registry(ctx, repos[i].Registry, repos[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// registry marks and sweeps one registry's repositories and records its
// bytes before and after. Memory: the run's sets, plus a set of what the
// registry's removed manifests reach.
func (r *gcRun) registry(ctx context.Context, name string, repos []store.Repo) error {
	r.regNum++
	r.regAfter = 0
	before := set{} // what candidates for removal reach
	for _, repo := range repos {
		if err := r.repo(ctx, repo, before); err != nil {
			return fmt.Errorf("%s: %w", repo, err)
		}
	}
	// What removed manifests reached and nothing remaining does was there
	// before only.
	only := int64(0)
	for k := range before {
		if c := r.blobs[k]; c.reg != r.regNum {
			only += c.size
		}
	}
	if _, ok := r.rep.GC.ByRegistry[name]; ok || len(repos) > 0 {
		r.rep.GC.ByRegistry[name] = RegistryBytes{BytesBefore: r.regAfter + only, BytesAfter: r.regAfter}
	}
	return nil
}

// reach records that the registry being marked keeps d.
func (r *gcRun) reach(d digest.Digest) {
	k := key(d)
	if c, ok := r.blobs[k]; ok && c.reg != r.regNum {
		c.reg = r.regNum
		r.blobs[k] = c
		r.regAfter += c.size
	}
}

// node is a manifest's references, read once per repository.
type gcNode struct {
	index bool
	refs  []digest.Digest // children (index) or config and layers
}

// repo marks what stays in repo (counted for the registry as it goes),
// removes the rest, and adds what the removed manifests reached to before.
func (r *gcRun) repo(ctx context.Context, repo store.Repo, before set) error {
	plan := r.plans[repo.Registry]
	// Roots: tags (minus retention's), manifests pulled (minus
	// retention's), and anything written or used within the delay.
	roots := []digest.Digest{}
	tags, err := r.st.Tags(ctx, repo)
	if err != nil && !errors.Is(err, store.ErrNameUnknown) {
		return err
	}
	for _, tag := range tags {
		ti, err := r.st.Tag(ctx, repo, tag)
		if errors.Is(err, store.ErrTagUnknown) {
			continue
		}
		if err != nil {
			return err
		}
		if rm, ok := plan.tagRemoval(repo, tag); ok && rm.Image.Manifest == ti.Digest {
			if r.removeTag(ctx, repo, tag, rm) {
				continue
			}
			if ti, err = r.st.Tag(ctx, repo, tag); err != nil {
				continue // gone after all
			}
		}
		roots = append(roots, ti.Digest)
	}
	pulls := map[digest.Digest]time.Time{}
	if pr, ok := r.st.(store.PullRecorder); ok {
		if pulls, err = pr.LastPulled(ctx, repo); err != nil {
			return err
		}
	}
	type linked struct {
		d    digest.Digest
		used time.Time
	}
	var mans []linked
	if err := r.col.CollectManifests(ctx, repo, func(e store.Entry) error {
		mans = append(mans, linked{e.Digest, e.LastUsed})
		return nil
	}); err != nil {
		return err
	}
	for _, m := range mans {
		_, pulled := pulls[m.d]
		if !m.used.Before(r.cutoff) {
			roots = append(roots, m.d)
		} else if pulled && !plan.removes(repo, m.d) {
			roots = append(roots, m.d)
		}
	}

	nodes := map[dkey]*gcNode{}
	kept := set{}     // manifests that stay
	repoRefs := set{} // content the remaining manifests reach
	if err := r.mark(ctx, repo, roots, nodes, kept, repoRefs); err != nil {
		return err
	}

	// Candidates: indexes first, so that one found in use keeps its
	// children before they are tried.
	var cands []digest.Digest
	for _, m := range mans {
		if !kept.has(m.d) {
			cands = append(cands, m.d)
		}
	}
	for _, d := range cands {
		n, _ := r.node(ctx, repo, d, nodes)
		before.add(d)
		if n != nil {
			for _, c := range n.refs {
				before.add(c)
			}
		}
	}
	slices.SortStableFunc(cands, func(a, b digest.Digest) int {
		ia, ib := nodes[key(a)] != nil && nodes[key(a)].index, nodes[key(b)] != nil && nodes[key(b)].index
		switch {
		case ia == ib:
			return 0
		case ia:
			return -1
		}
		return 1
	})
	for _, d := range cands {
		if kept.has(d) {
			continue // an index found in use keeps it
		}
		reason := ReasonUntagged
		if plan.removes(repo, d) {
			reason = cmp.Or(r.reasons[key(d)], ReasonUntagged)
		}
		ok := r.unreadable == 0 // unknown references: remove nothing
		if ok && !r.dryRun {
			if ok, err = r.col.RemoveManifest(ctx, repo, d, r.cutoff); err != nil {
				return err
			}
		}
		if !ok {
			// In use after all: it and what it reaches stay.
			r.rep.GC.InUse++
			if err := r.mark(ctx, repo, []digest.Digest{d}, nodes, kept, repoRefs); err != nil {
				return err
			}
			continue
		}
		r.removedMan.add(d)
		e := Removed{Registry: repo.Registry, Repository: repo.Name, Manifest: d.String(), Reason: reason, Bytes: r.blobs[key(d)].size}
		if t, ok := pulls[d]; ok {
			e.LastPulled = &t
		}
		r.rep.Removed = append(r.rep.Removed, e)
		r.rep.GC.ManifestsRemoved++
	}
	for _, d := range cands {
		if !kept.has(d) {
			r.claim(d, repo.Registry)
			if n := nodes[key(d)]; n != nil {
				for _, c := range n.refs {
					r.claim(c, repo.Registry)
				}
			}
		}
	}

	// Blob links nothing remaining in repo references.
	// (RemoveBlobLink checks the link's own last use.)
	var stale []digest.Digest
	if err := r.col.CollectBlobLinks(ctx, repo, func(d digest.Digest) error {
		if repoRefs.has(d) {
			return nil
		}
		if c, ok := r.blobs[key(d)]; ok && c.lastUsed >= r.cutoff.UnixNano() {
			return nil
		}
		stale = append(stale, d)
		return nil
	}); err != nil {
		return err
	}
	for _, d := range stale {
		r.claim(d, repo.Registry)
		if r.dryRun || r.unreadable > 0 {
			continue
		}
		ok, err := r.col.RemoveBlobLink(ctx, repo, d, r.cutoff)
		if err != nil {
			return err
		}
		if ok {
			r.rep.GC.LinksRemoved++
		}
	}
	return nil
}

// digestOf returns the digest of a stored blob's key.
func (r *gcRun) digestOf(k dkey) digest.Digest {
	if d, ok := r.other[k]; ok {
		return d
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(k[:]))
}

// claim attributes d to registry, for metrics, unless already attributed.
func (r *gcRun) claim(d digest.Digest, registry string) {
	if _, ok := r.owner[key(d)]; !ok {
		r.owner[key(d)] = registry
	}
}

// removeTag removes a tag retention planned; false when it was moved
// meanwhile (it then stays a root).
func (r *gcRun) removeTag(ctx context.Context, repo store.Repo, tag string, rm Removal) bool {
	if !r.dryRun {
		ok, err := r.col.RemoveTag(ctx, repo, tag, rm.Image.Manifest)
		if err != nil {
			r.log.Warn("gc: removing tag failed", "registry", repo.Registry, "repo", repo.Name, "tag", tag, "error", err)
			return false
		}
		if !ok {
			return false
		}
	}
	e := Removed{Registry: repo.Registry, Repository: repo.Name, Tag: tag, Manifest: rm.Image.Manifest.String(),
		Reason: rm.Reason, Bytes: rm.Bytes}
	if t := rm.Image.LastPulled; !t.IsZero() {
		e.LastPulled = &t
	}
	r.rep.Removed = append(r.rep.Removed, e)
	r.rep.GC.TagsRemoved++
	return true
}

// mark adds roots and everything they reach in repo (index children,
// referrers, config and layers) to kept, repoRefs and the run's referenced
// set.
func (r *gcRun) mark(ctx context.Context, repo store.Repo, roots []digest.Digest, nodes map[dkey]*gcNode, kept, repoRefs set) error {
	stack := slices.Clone(roots)
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if kept.has(d) {
			continue
		}
		kept.add(d)
		repoRefs.add(d)
		r.reach(d)
		n, err := r.node(ctx, repo, d, nodes)
		if err != nil {
			return err
		}
		if n == badNode {
			// A remaining manifest whose references are unknown: no
			// manifest, link or blob is removed this run.
			r.unreadable++
			continue
		}
		if n == nil {
			continue
		}
		if n.index {
			stack = append(stack, n.refs...)
		} else {
			for _, b := range n.refs {
				repoRefs.add(b)
				r.reach(b)
			}
		}
		refs, err := r.st.Referrers(ctx, repo, d)
		if err != nil && !errors.Is(err, store.ErrManifestUnknown) {
			return err
		}
		for _, ref := range refs {
			stack = append(stack, ref.Digest)
		}
	}
	return nil
}

// badNode stands for a manifest that could not be read or parsed.
var badNode = &gcNode{}

// node reads manifest d of repo once; nil when it is not stored there,
// badNode when it cannot be read or parsed (if it stays, its unknown
// references stop the run from removing anything, see mark).
func (r *gcRun) node(ctx context.Context, repo store.Repo, d digest.Digest, nodes map[dkey]*gcNode) (*gcNode, error) {
	if n, ok := nodes[key(d)]; ok {
		return n, nil
	}
	m, err := r.st.Manifest(ctx, repo, d)
	if errors.Is(err, store.ErrManifestUnknown) {
		nodes[key(d)] = nil
		return nil, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		r.log.Warn("gc: manifest unreadable", "registry", repo.Registry, "repo", repo.Name, "digest", d, "error", err)
		nodes[key(d)] = badNode
		return badNode, nil
	}
	p, err := manifest.Parse(m.MediaType, m.Data)
	if err != nil {
		r.log.Warn("gc: manifest unparsable", "registry", repo.Registry, "repo", repo.Name, "digest", d, "error", err)
		nodes[key(d)] = badNode
		return badNode, nil
	}
	n := &gcNode{index: manifest.IsIndex(p.MediaType)}
	for _, ref := range p.References() {
		n.refs = append(n.refs, ref.Digest)
	}
	nodes[key(d)] = n
	return n, nil
}

// sweepBlobs removes stored content no remaining manifest references,
// unused since the cutoff.
func (r *gcRun) sweepBlobs(ctx context.Context) error {
	if r.unreadable > 0 {
		r.rep.GC.BlobSweepSkipped = true
		return nil
	}
	cut := r.cutoff.UnixNano()
	var ds []digest.Digest
	for k, c := range r.blobs {
		if c.lastUsed >= cut {
			continue // recently used
		}
		if c.reg == 0 {
			ds = append(ds, r.digestOf(k))
		}
	}
	slices.Sort(ds)
	for _, d := range ds {
		k := key(d)
		size, ok := r.blobs[k].size, true
		if !r.dryRun {
			var err error
			if size, ok, err = r.col.RemoveBlob(ctx, d, r.cutoff); err != nil {
				return err
			}
		}
		if !ok {
			r.rep.GC.InUse++
			continue
		}
		r.rep.GC.BytesFreed += size
		if r.removedMan.has(d) {
			continue // listed as the manifest
		}
		r.rep.GC.BlobsRemoved++
		r.rep.Removed = append(r.rep.Removed, Removed{Registry: r.owner[k], Blob: d.String(),
			Reason: cmp.Or(r.reasons[k], ReasonUnreferenced), Bytes: size})
	}
	return nil
}

// tagRemoval returns the planned removal of repo's tag.
func (p *regPlan) tagRemoval(repo store.Repo, tag string) (Removal, bool) {
	if p == nil {
		return Removal{}, false
	}
	rm, ok := p.tags[repo][tag]
	return rm, ok
}

// removes reports whether manifest d of repo belongs to an image
// retention removes (a tag's or one pulled by digest).
func (p *regPlan) removes(repo store.Repo, d digest.Digest) bool {
	if p == nil {
		return false
	}
	return p.content[repo].has(d)
}
