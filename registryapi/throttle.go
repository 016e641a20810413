package registryapi

import (
	"container/list"
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// throttle counts failed logins per (user, client address) and per client
// address in fixed windows. Counting per address, never per user alone,
// keeps an attacker elsewhere from locking the real user out. The counters
// live in an LRU of at most max entries.
type throttle struct {
	perUser, perClient int
	window             time.Duration
	max                int
	now                func() time.Time

	mu    sync.Mutex
	lru   *list.List // of *failures, most recently used first
	items map[string]*list.Element
}

type failures struct {
	key   string
	count int
	start time.Time
}

func newThrottle(perUser, perClient int, window time.Duration, maxEntries int, now func() time.Time) *throttle {
	return &throttle{perUser: perUser, perClient: perClient, window: window, max: maxEntries, now: now,
		lru: list.New(), items: map[string]*list.Element{}}
}

func userKey(user, client string) string { return "u\x00" + user + "\x00" + client }
func clientKey(client string) string     { return "c\x00" + client }

// check returns how long logins of user from client are refused (0: not).
func (t *throttle) check(user, client string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	wait := t.over(userKey(user, client), t.perUser, now)
	return max(wait, t.over(clientKey(client), t.perClient, now))
}

func (t *throttle) over(key string, limit int, now time.Time) time.Duration {
	e, ok := t.items[key]
	if !ok {
		return 0
	}
	f := e.Value.(*failures)
	end := f.start.Add(t.window)
	if f.count < limit || !now.Before(end) {
		return 0
	}
	return end.Sub(now)
}

// fail records a failed login.
func (t *throttle) fail(user, client string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.add(userKey(user, client), now)
	t.add(clientKey(client), now)
}

func (t *throttle) add(key string, now time.Time) {
	if e, ok := t.items[key]; ok {
		t.lru.MoveToFront(e)
		f := e.Value.(*failures)
		if !now.Before(f.start.Add(t.window)) {
			f.count, f.start = 0, now
		}
		f.count++
		return
	}
	t.items[key] = t.lru.PushFront(&failures{key: key, count: 1, start: now})
	for t.lru.Len() > t.max {
		old := t.lru.Back()
		t.lru.Remove(old)
		delete(t.items, old.Value.(*failures).key)
	}
}

// succeed forgets the failures of user from client.
func (t *throttle) succeed(user, client string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.items[userKey(user, client)]; ok {
		t.lru.Remove(e)
		delete(t.items, userKey(user, client))
	}
}

// len returns the number of counters kept.
func (t *throttle) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}

// clientAddr is the client part of a remote address that limits count by:
// the IP address, or its /64 for IPv6 (one host usually holds a whole /64).
func clientAddr(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// suspect reports whether logins from client failed within the window.
func (t *throttle) suspect(client string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.items[clientKey(client)]
	return ok && t.now().Before(e.Value.(*failures).start.Add(t.window))
}

// gate bounds concurrent bcrypt work. Waiters from clients without recent
// failures go first, so that guessers queue behind real users.
type gate struct {
	size int

	mu        sync.Mutex
	free      int
	high, low []chan struct{}
}

func newGate(n int) *gate { return &gate{size: n, free: n} }

// acquire waits for a slot (first among the waiters when first).
func (g *gate) acquire(ctx context.Context, first bool) error {
	g.mu.Lock()
	if g.free > 0 {
		g.free--
		g.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	if first {
		g.high = append(g.high, ch)
	} else {
		g.low = append(g.low, ch)
	}
	g.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	queued := false
	g.high, queued = without(g.high, ch, queued)
	g.low, queued = without(g.low, ch, queued)
	g.mu.Unlock()
	if !queued {
		g.release() // handed a slot while giving up: pass it on
	}
	return ctx.Err()
}

func without(q []chan struct{}, ch chan struct{}, found bool) ([]chan struct{}, bool) {
	if i := slices.Index(q, ch); i >= 0 {
		return slices.Delete(q, i, i+1), true
	}
	return q, found
}

// release hands the slot to the next waiter, or frees it.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, q := range []*[]chan struct{}{&g.high, &g.low} {
		if len(*q) > 0 {
			close((*q)[0])
			*q = (*q)[1:]
			return
		}
	}
	g.free++
}
