package cache

import (
	"context"
	"sync"
)

// flight is one shared piece of work; waiters block on done.
type flight[V any] struct {
	done chan struct{}
	val  V
	err  error
}

func newFlight[V any]() *flight[V] { return &flight[V]{done: make(chan struct{})} }

func (f *flight[V]) finish(v V, err error) {
	f.val, f.err = v, err
	close(f.done)
}

// wait returns the flight's result, or ctx's error if ctx ends first. The
// flight itself goes on.
func (f *flight[V]) wait(ctx context.Context) (V, error) {
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	}
}

// inflight coalesces work by key within the process: W is the shared
// piece of work (a manifest or tag flight, a blob fill).
type inflight[K, W comparable] struct {
	mu sync.Mutex
	m  map[K]W
}

// get returns the work in progress for key (the zero W if none).
func (s *inflight[K, W]) get(key K) W {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key]
}

// join returns the work in progress for key, or starts it with start.
// leader reports whether this caller started it.
func (s *inflight[K, W]) join(key K, start func() W) (w W, leader bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.m[key]; ok {
		return w, false
	}
	if s.m == nil {
		s.m = map[K]W{}
	}
	w = start()
	s.m[key] = w
	return w, true
}

// forget removes finished work so the next caller starts afresh.
func (s *inflight[K, W]) forget(key K, w W) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[key] == w {
		delete(s.m, key)
	}
}
