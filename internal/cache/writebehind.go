package cache

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/store"
)

// Manifests and small blobs (those received into memory) a client is
// waiting for are answered as soon as they are verified; writing them to
// the store waits for a pause in cold traffic (writeQuiet without upstream
// fetches or clients reading fills), for at most writeMaxDelay, so that
// fsyncs and file writes do not compete with the pull that is still
// running. A background job that needs such a blob stored (it joined the
// client's fill) has it written at once, after waiting for clients like
// any background fetch (Cache.fetch). A crash in between loses those cache entries, never serves
// anything unverified: nothing is visible in the store before it is
// written whole. Background work (worker syncs, scheduled jobs) stores at
// once.
const (
	writeQuiet    = 250 * time.Millisecond
	writeMaxDelay = time.Second
)

// activity counts a client's cold work in progress: upstream fetches for
// clients and clients reading fills. Background work's own fetches do not
// hold a client's write-behind back.
type activity struct {
	mu      sync.Mutex
	n       int
	last    time.Time     // when n last dropped to zero
	changed chan struct{} // closed and replaced when n changes
}

// begin records one piece of cold work; the returned func ends it (once).
func (a *activity) begin() (end func()) {
	a.mu.Lock()
	a.n++
	a.notifyLocked()
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.n--
			if a.n == 0 {
				a.last = time.Now()
			}
			a.notifyLocked()
			a.mu.Unlock()
		})
	}
}

// notify wakes whoever waits on a snapshot's channel, without a change of
// the work in progress (something else they look at changed).
func (a *activity) notify() {
	a.mu.Lock()
	a.notifyLocked()
	a.mu.Unlock()
}

func (a *activity) notifyLocked() {
	if a.changed != nil {
		close(a.changed)
		a.changed = nil
	}
}

// snapshot returns the work in progress, when it last dropped to zero,
// and a channel closed at the next change.
func (a *activity) snapshot() (n int, last time.Time, changed <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.changed == nil {
		a.changed = make(chan struct{})
	}
	return a.n, a.last, a.changed
}

// waitQuiet returns once no cold work has run for writeQuiet, at the
// latest writeMaxDelay after it was called, when urgent reports true, when
// asked is closed, or when ctx ends.
func (a *activity) waitQuiet(ctx context.Context, urgent func() bool, asked <-chan struct{}) {
	since := time.Now()
	for {
		n, last, changed := a.snapshot()
		now := time.Now()
		left := writeMaxDelay - now.Sub(since)
		if left <= 0 || urgent() {
			return
		}
		wait := left
		if n == 0 {
			q := writeQuiet - now.Sub(last)
			if q <= 0 {
				return
			}
			wait = min(wait, q)
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		case <-asked:
			t.Stop()
			return
		case <-ctx.Done():
			t.Stop()
			return
		}
		t.Stop()
	}
}

// later stores a verified blob a client's fill holds in memory: write
// runs once it is a good moment (the fill's own upstream work is over;
// fill.Config.Later).
func (c *Cache) later(ctx context.Context, write func() error) error {
	c.metrics.PendingWrites.Inc()
	defer c.metrics.PendingWrites.Dec()
	c.writeSoon(ctx, nil)
	return write()
}

// writeSoon waits until no cold work ran for writeQuiet (at most
// writeMaxDelay, or until asked is closed).
func (c *Cache) writeSoon(ctx context.Context, asked <-chan struct{}) {
	c.active.waitQuiet(ctx, func() bool { return c.fills.MemoryHigh() || c.closing() || c.hurry.Load() > 0 }, asked)
}

// pendingSet holds manifests (and the tags that name them) answered to
// clients but not written to the store yet.
type pendingSet struct {
	mu        sync.Mutex
	manifests map[string]pendingManifest // repo + "@" + digest
	tags      map[string]*pendingTag     // repo + ":" + tag
}

type pendingManifest struct {
	repo     store.Repo
	m        store.Manifest
	subject  digest.Digest      // "" without one
	referrer ocispec.Descriptor // its referrers entry, when it has a subject
}

type pendingTag struct {
	info    store.TagInfo
	written chan struct{} // closed once the tag is in the store (or given up)
	urgent  chan struct{} // closed (once) to have it written at once
	urge    sync.Once
}

// storeNow asks for the pending write at once and waits for it.
func (t *pendingTag) storeNow(ctx context.Context) error {
	t.urge.Do(func() { close(t.urgent) })
	select {
	case <-t.written:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func manifestKey(repo store.Repo, d digest.Digest) string { return repo.String() + "@" + d.String() }
func tagKey(repo store.Repo, tag string) string           { return repo.String() + ":" + tag }

func (p *pendingSet) manifest(repo store.Repo, d digest.Digest) (store.Manifest, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pm, ok := p.manifests[manifestKey(repo, d)]
	return pm.m, ok
}

// referrers returns the referrers entries of pending manifests of repo
// whose subject is d.
func (p *pendingSet) referrers(repo store.Repo, d digest.Digest) []ocispec.Descriptor {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []ocispec.Descriptor
	for _, pm := range p.manifests {
		if pm.subject == d && pm.repo == repo {
			out = append(out, pm.referrer)
		}
	}
	return out
}

// tagNames returns the pending tags of repo.
func (p *pendingSet) tagNames(repo store.Repo) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	prefix := repo.String() + ":"
	for k := range p.tags {
		if name, ok := strings.CutPrefix(k, prefix); ok {
			out = append(out, name)
		}
	}
	return out
}

func (p *pendingSet) tag(repo store.Repo, tag string) (*pendingTag, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.tags[tagKey(repo, tag)]
	return t, ok
}

func (p *pendingSet) add(repo store.Repo, m store.Manifest, opts store.PutManifestOptions, info store.TagInfo) *pendingTag {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.manifests == nil {
		p.manifests, p.tags = map[string]pendingManifest{}, map[string]*pendingTag{}
	}
	pm := pendingManifest{repo: repo, m: m}
	if opts.Subject != nil {
		pm.subject = opts.Subject.Digest
		pm.referrer = opts.ReferrerEntry(m)
	}
	p.manifests[manifestKey(repo, m.Digest)] = pm
	tag := opts.Tag
	if tag == "" {
		return nil
	}
	t := &pendingTag{info: info, written: make(chan struct{}), urgent: make(chan struct{})}
	p.tags[tagKey(repo, tag)] = t
	return t
}

func (p *pendingSet) remove(repo store.Repo, d digest.Digest, tag string, t *pendingTag) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.manifests, manifestKey(repo, d))
	if t != nil {
		if p.tags[tagKey(repo, tag)] == t {
			delete(p.tags, tagKey(repo, tag))
		}
		close(t.written)
	}
}
