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

// flights coalesces work by key within the process.
type flights[K comparable, V any] struct {
	mu sync.Mutex
	m  map[K]*flight[V]
}

// join returns the flight in progress for key, or starts one with start.
// leader reports whether this caller started it.
func (s *flights[K, V]) join(key K, start func() *flight[V]) (f *flight[V], leader bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.m[key]; ok {
		return f, false
	}
	if s.m == nil {
		s.m = map[K]*flight[V]{}
	}
	f = start()
	s.m[key] = f
	return f, true
}

// forget removes a finished flight so the next caller starts afresh.
func (s *flights[K, V]) forget(key K, f *flight[V]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[key] == f {
		delete(s.m, key)
	}
}
