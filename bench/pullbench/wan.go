package main

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// The WAN scenario puts the upstream behind shaper, a TCP proxy inside
// pullbench that adds a round trip to every connection set-up, half a
// round trip to every chunk in each direction, and caps the bandwidth of
// each direction (shared by every connection, like one link). The small
// image is then pulled cold and warm directly (through the shaper), through
// regwarm and through the proxy (both reaching the upstream through the
// shaper, the client next to them): a cache's extra round trips cost most
// there.

// shaper is a latency and bandwidth shaping TCP proxy.
type shaper struct {
	ln     net.Listener
	target string
	rtt    time.Duration
	rate   float64 // bytes per second per direction

	mu       sync.Mutex
	linkFree [2]time.Time // per direction: when the link has sent what it was given
	conns    map[net.Conn]bool
	closed   bool
}

func startShaper(target string, rtt time.Duration, bytesPerSecond float64) (*shaper, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &shaper{ln: ln, target: target, rtt: rtt, rate: bytesPerSecond, conns: map[net.Conn]bool{}}
	go s.serve()
	return s, nil
}

func (s *shaper) addr() string { return s.ln.Addr().String() }

// close stops accepting and closes every connection.
func (s *shaper) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
}

func (s *shaper) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return false
	}
	s.conns[c] = true
	return true
}

func (s *shaper) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

// handle connects c to the target after one round trip (the TCP
// handshake across the link) and shapes both directions.
func (s *shaper) handle(c net.Conn) {
	if !s.track(c) {
		return
	}
	time.Sleep(s.rtt)
	u, err := net.Dial("tcp", s.target)
	if err != nil {
		_ = c.Close()
		return
	}
	if !s.track(u) {
		_ = c.Close()
		return
	}
	done := make(chan struct{})
	go func() { s.pipe(u, c, 0); close(done) }()
	s.pipe(c, u, 1)
	<-done
	_ = c.Close()
	_ = u.Close()
	s.mu.Lock()
	delete(s.conns, c)
	delete(s.conns, u)
	s.mu.Unlock()
}

type chunk struct {
	b  []byte
	at time.Time // when it may leave: read time plus half a round trip
}

// pipe copies src to dst, each chunk delayed by half a round trip and
// paced to the link's rate in direction dir.
func (s *shaper) pipe(dst, src net.Conn, dir int) {
	ch := make(chan chunk, 256)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{buf[:n], time.Now().Add(s.rtt / 2)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		if d := time.Until(c.at); d > 0 {
			time.Sleep(d)
		}
		if d := s.pace(dir, len(c.b)); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	for range ch { // drain: the reader ends when src closes
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// pace books n bytes on the link of direction dir and returns how long
// to wait until they have been sent.
func (s *shaper) pace(dir, n int) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.linkFree[dir].Before(now) {
		s.linkFree[dir] = now
	}
	s.linkFree[dir] = s.linkFree[dir].Add(time.Duration(float64(n) / s.rate * float64(time.Second)))
	return s.linkFree[dir].Sub(now)
}

// wanResults are the cold and warm pulls over the shaped link.
type wanResults struct {
	res       *results
	rtt       time.Duration
	megabytes float64 // MB/s
}

// wanScenario pulls im cold and warm per target with the upstream behind
// a shaper of rtt and mbps MB/s.
func (e *env) wanScenario(im *image, runs int, rtt time.Duration, mbps float64) (*wanResults, error) {
	if mbps <= 0 || rtt < 0 {
		return nil, errors.New("the WAN link needs a positive rate and a round trip of 0 or more")
	}
	sh, err := startShaper(e.upstream.addr, rtt, mbps*1e6)
	if err != nil {
		return nil, err
	}
	e.wan = sh
	relay := e.relay
	e.relay = "" // the floor is measured on the LAN only
	defer func() {
		e.wan, e.relay = nil, relay
		sh.close()
	}()
	progress("WAN: upstream behind a shaper (%v round trip, %.0f MB/s) at %s", rtt, mbps, sh.addr())
	res := newResults()
	err = e.coldWarm(res, im, runs)
	return &wanResults{res: res, rtt: rtt, megabytes: mbps}, err
}

// Targets over the WAN link, against direct.
const (
	maxWANCold = 1.05
	maxWANWarm = 0.3
)

// render writes the WAN table and returns the targets missed.
func (w *wanResults) render(p func(string, ...any), im *image) []string {
	cold, warm := per(w.res.cold, wallMS), per(w.res.warm, wallMS)
	p("\nOver a WAN link: the upstream behind a shaping TCP proxy in pullbench (%v added per connection set-up and per request/response exchange, %.0f MB/s per direction); the client is next to the cache. **direct** pulls through the link; regwarm (`regwarm serve`) and the proxy fetch through it. `%s:%s` (%s per pull), medians of %d.\n\n",
		w.rtt, w.megabytes, im.repo, im.tag, bytesMiB(float64(im.pullBytes())), len(w.res.cold[targetDirect]))
	p("| pull | direct | regwarm | ÷ direct | proxy | proxy ÷ direct | regwarm target | met |\n")
	p("|---|---:|---:|---:|---:|---:|---|---|\n")
	var missed []string
	for _, r := range []struct {
		name  string
		v     map[string]float64
		limit float64
	}{{"cold", cold, maxWANCold}, {"warm", warm, maxWANWarm}} {
		rw := ratio(r.v, targetRegwarm, targetDirect)
		met := "yes"
		if rw > r.limit {
			met = "**NO**"
			missed = append(missed, "WAN "+r.name+" pull")
		}
		p("| %s | %s | %s | %s | %s | %s | ≤ %.2f× direct | %s |\n", r.name, ms(r.v[targetDirect]), ms(r.v[targetRegwarm]),
			fmtRatio(rw), ms(r.v[targetProxy]), fmtRatio(ratio(r.v, targetProxy, targetDirect)), r.limit, met)
	}
	return missed
}

// print writes the medians for -only wan.
func (w *wanResults) print() {
	cold, warm := per(w.res.cold, wallMS), per(w.res.warm, wallMS)
	for _, t := range targets {
		fmt.Printf("wan %-8s cold median %s (%s direct)  warm median %s (%s direct)\n", t,
			ms(cold[t]), fmtRatio(ratio(cold, t, targetDirect)), ms(warm[t]), fmtRatio(ratio(warm, t, targetDirect)))
	}
}
