package cache

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
)

// Foreground first: a blob fetch for background work (a worker's sync, a
// scheduled job) that would start a new upstream fill waits while clients
// are being answered from upstream in this process, and until none has
// been for a quiet period, so warming the rest of an image does not take
// CPU, disk and upstream connections from the pull that triggered it.
// After maxWait it goes ahead anyway, one at a time while clients are
// still served (slow), so a process that is never idle still warms.
//
// The quiet period depends on what the cache knows of the client's pull
// (pulls below): while a pull it fetched a manifest for is incomplete (an
// index whose platform manifest was not asked yet, an image some of whose
// blobs were not served yet) the client is only thinking between two
// requests, so background work waits for 3× quiet of idleness; once every
// pull is complete (every blob of the image it picked was served) it waits
// only quiet/6, so the other platforms are warmed right after the pull.
const (
	defaultQuiet   = 300 * time.Millisecond
	defaultMaxWait = 2 * time.Second
	// pullTTL forgets a pull that made no progress for that long (a
	// client that had some layers already, or went away).
	pullTTL = 5 * time.Second
	// maxOpenPulls bounds the pulls tracked; more are not tracked (the
	// plain quiet period applies to them).
	maxOpenPulls = 4096
)

// priority counts client misses in flight and holds background fetches
// back while there are any.
type priority struct {
	quiet, maxWait time.Duration
	clients        activity      // client misses in flight
	slow           chan struct{} // one background fetch while clients are served

	mu    sync.Mutex
	pulls map[pullKey]*openPull // client pulls in progress
	done  time.Time             // when a client pull last completed
}

// pullKey names a manifest fetched for a client.
type pullKey struct {
	repo store.Repo
	d    digest.Digest
}

// openPull is a client pull in progress: an index waiting for the client
// to ask one of its manifests, or an image whose blobs the client has not
// all been served yet.
type openPull struct {
	at       time.Time                  // opened, or last progress
	children map[digest.Digest]struct{} // an index's manifests
	want     map[digest.Digest]struct{} // an image's blobs not served yet
}

func newPriority(quiet, maxWait time.Duration) *priority {
	return &priority{quiet: quiet, maxWait: maxWait, slow: make(chan struct{}, 1), pulls: map[pullKey]*openPull{}}
}

// fetchedManifest records manifest d of repo, fetched for a client: the
// index's pull it belongs to progresses, and a pull of d opens.
func (p *priority) fetchedManifest(repo store.Repo, d digest.Digest, mf *manifest.Manifest) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.servedManifestLocked(repo, d)
	op := &openPull{at: now}
	switch {
	case len(mf.Manifests) > 0:
		op.children = make(map[digest.Digest]struct{}, len(mf.Manifests))
		for _, c := range mf.Manifests {
			op.children[c.Digest] = struct{}{}
		}
	case mf.Config != nil:
		op.want = make(map[digest.Digest]struct{}, 1+len(mf.Layers))
		op.want[mf.Config.Digest] = struct{}{}
		for _, l := range mf.Layers {
			if !manifest.NonDistributable(l) {
				op.want[l.Digest] = struct{}{}
			}
		}
	default:
		return
	}
	p.expireLocked(now)
	if len(p.pulls) >= maxOpenPulls {
		return
	}
	p.pulls[pullKey{repo, d}] = op
}

// servedManifest records that a client was answered manifest d of repo
// from the cache: an index's pull waiting for it progresses.
func (p *priority) servedManifest(repo store.Repo, d digest.Digest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.servedManifestLocked(repo, d)
}

func (p *priority) servedManifestLocked(repo store.Repo, d digest.Digest) {
	for k, op := range p.pulls {
		if _, ok := op.children[d]; ok && k.repo == repo {
			p.completeLocked(k)
		}
	}
}

// servedBlob records that a client was served blob d of repo (it read it,
// or gave up): an image's pull that wanted it progresses, and is complete
// once every blob was served.
func (p *priority) servedBlob(repo store.Repo, d digest.Digest) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, op := range p.pulls {
		if _, ok := op.want[d]; !ok || k.repo != repo {
			continue
		}
		delete(op.want, d)
		op.at = now
		if len(op.want) == 0 {
			p.completeLocked(k)
		}
	}
}

func (p *priority) completeLocked(k pullKey) {
	delete(p.pulls, k)
	p.done = time.Now()
	p.clients.notify() // a background fetch waiting looks again
}

// expireLocked forgets pulls that made no progress for pullTTL.
func (p *priority) expireLocked(now time.Time) {
	for k, op := range p.pulls {
		if now.Sub(op.at) >= pullTTL {
			delete(p.pulls, k)
		}
	}
}

// quietFor is how long the process must have had no client miss in
// flight, last having ended at last, before background work starts.
func (p *priority) quietFor(now, last time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expireLocked(now)
	switch {
	case len(p.pulls) > 0:
		return 3 * p.quiet // a pull is incomplete: the client is between requests
	case !p.done.IsZero() && !p.done.Before(last):
		return p.quiet / 6 // the last client activity completed a pull
	}
	return p.quiet
}

// client records a client miss in flight; the returned func ends it (once).
func (p *priority) client() (end func()) { return p.clients.begin() }

// background waits until no client miss has been in flight for the quiet
// period, or, after maxWait, for the single slot background work has while
// clients are served. release gives the slot back (a no-op without one).
func (p *priority) background(ctx context.Context) (release func(), err error) {
	since := time.Now()
	for {
		n, last, changed := p.clients.snapshot()
		now := time.Now()
		quiet := p.quietFor(now, last)
		if n == 0 && now.Sub(last) >= quiet {
			return func() {}, nil
		}
		left := p.maxWait - now.Sub(since)
		if left <= 0 {
			return p.slowSlot(ctx)
		}
		wait := left
		if n == 0 {
			wait = min(wait, quiet-now.Sub(last))
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

// slowSlot takes the one slot background fetches share while clients are
// served.
func (p *priority) slowSlot(ctx context.Context) (release func(), err error) {
	select {
	case p.slow <- struct{}{}:
		return func() { <-p.slow }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// yield holds background work back (see background) before it starts new
// upstream work; for a client request it returns at once.
func (c *Cache) yield(ctx context.Context, m mode) (release func(), err error) {
	if m.client {
		return func() {}, nil
	}
	return c.prio.background(ctx)
}

// WithForeground sets how long the process must have had no client fill in
// flight before background fetches start (quiet), and how long they wait
// at most before going ahead one at a time (maxWait); zero keeps a default.
func WithForeground(quiet, maxWait time.Duration) Option {
	return func(c *Cache) error {
		if quiet < 0 || maxWait < 0 {
			return errors.New("cache: negative foreground timing")
		}
		if quiet > 0 {
			c.prio.quiet = quiet
		}
		if maxWait > 0 {
			c.prio.maxWait = maxWait
		}
		return nil
	}
}
