package cache

import (
	"context"
	"errors"
	"time"
)

// Foreground first: a blob fetch for background work (a worker's sync, a
// scheduled job) that would start a new upstream fill waits while clients
// are being answered from upstream in this process, and until none has
// been for a quiet period, so warming the rest of an image does not take
// CPU, disk and upstream connections from the pull that triggered it.
// After maxWait it goes ahead anyway, one at a time while clients are
// still served (slow), so a process that is never idle still warms.
const (
	defaultQuiet   = 300 * time.Millisecond
	defaultMaxWait = 2 * time.Second
)

// priority counts client misses in flight and holds background fetches
// back while there are any.
type priority struct {
	quiet, maxWait time.Duration
	clients        activity      // client misses in flight
	slow           chan struct{} // one background fetch while clients are served
}

func newPriority(quiet, maxWait time.Duration) *priority {
	return &priority{quiet: quiet, maxWait: maxWait, slow: make(chan struct{}, 1)}
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
		if n == 0 && now.Sub(last) >= p.quiet {
			return func() {}, nil
		}
		left := p.maxWait - now.Sub(since)
		if left <= 0 {
			return p.slowSlot(ctx)
		}
		wait := left
		if n == 0 {
			wait = min(wait, p.quiet-now.Sub(last))
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
