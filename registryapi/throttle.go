package registryapi

import (
	"container/list"
	"net"
	"net/netip"
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
