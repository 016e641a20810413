package connector_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

// exchange is one scripted step: a request the connector is expected to
// send (method and path) and the canned answer. uses limits how often it
// answers (0: any number of times).
type exchange struct {
	method, path string
	status       int
	header       http.Header
	body         []byte
	uses         int
}

// script is an HTTP server that answers only what its exchanges list, the
// first matching exchange with uses left winning. Any other request fails
// the test. It records every request it saw.
type script struct {
	t     testing.TB
	mu    sync.Mutex
	steps []exchange
	used  []int
	seen  []string // "METHOD path"
	url   string
}

func newScript(t testing.TB, steps ...exchange) *script {
	t.Helper()
	s := &script{t: t, steps: steps, used: make([]int, len(steps))}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *script) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.seen = append(s.seen, r.Method+" "+r.URL.Path)
	i := slices.IndexFunc(s.steps, func(x exchange) bool { return x.method == r.Method && x.path == r.URL.Path })
	for i >= 0 && s.steps[i].uses > 0 && s.used[i] >= s.steps[i].uses {
		next := slices.IndexFunc(s.steps[i+1:], func(x exchange) bool { return x.method == r.Method && x.path == r.URL.Path })
		if next < 0 {
			i = -1
			break
		}
		i += 1 + next
	}
	if i < 0 {
		s.mu.Unlock()
		s.t.Errorf("unscripted request %s %s", r.Method, r.URL.Path)
		http.Error(w, "unscripted", http.StatusTeapot)
		return
	}
	s.used[i]++
	x := s.steps[i]
	s.mu.Unlock()
	for k, v := range x.header {
		w.Header()[k] = v
	}
	if x.status == 0 {
		x.status = http.StatusOK
	}
	w.WriteHeader(x.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(x.body)
	}
}

// count returns how many requests had method and path.
func (s *script) count(method, path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, x := range s.seen {
		if x == method+" "+path {
			n++
		}
	}
	return n
}

// requests returns every request seen so far.
func (s *script) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}
