package cache

import (
	"context"
	"sync"
	"testing"
	"time"
)

// silentLeases is a lease service whose holder ("another process") died:
// its lease lapses without the release being announced, as a NATS KV
// entry expiring with the bucket TTL does.
type silentLeases struct {
	mu    sync.Mutex
	held  bool
	waits int
}

func (l *silentLeases) Acquire(context.Context, string) (func(), bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held {
		return nil, false, nil
	}
	return func() {}, true, nil
}

func (l *silentLeases) Released(ctx context.Context, _ string) error {
	l.mu.Lock()
	l.waits++
	l.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}

func (l *silentLeases) lapse() {
	l.mu.Lock()
	l.held = false
	l.mu.Unlock()
}

// TestLeaseWaitWakesOnRelease: a fill waiting for another process's lease
// goes ahead as soon as the release is announced, long before the slow
// recheck.
func TestLeaseWaitWakesOnRelease(t *testing.T) {
	t.Parallel()
	leases := newFakeLeases()
	f := newFixture(t, "", WithLeases(leases))
	f.cache.leaseRecheck = time.Hour
	img := f.up.AddImage("app", "v1", 3000)
	done := make(chan error, 1)
	go func() {
		_, _, err := f.cache.Warming().Fetch(context.Background(), hub("app"), img.Layers[0])
		done <- err
	}()
	waitFor(t, func() bool { return leases.waits.Load() > 0 })
	leases.release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fill did not go ahead after the release")
	}
}

// TestLeaseLapsedUnannounced: a lease that lapses without a release being
// announced is noticed by the slow recheck, and the fill goes ahead.
func TestLeaseLapsedUnannounced(t *testing.T) {
	t.Parallel()
	leases := &silentLeases{held: true}
	f := newFixture(t, "", WithLeases(leases))
	f.cache.leaseRecheck = 20 * time.Millisecond
	img := f.up.AddImage("app", "v1", 3000)
	done := make(chan error, 1)
	go func() {
		_, _, err := f.cache.Warming().Fetch(context.Background(), hub("app"), img.Layers[0])
		done <- err
	}()
	waitFor(t, func() bool { leases.mu.Lock(); defer leases.mu.Unlock(); return leases.waits > 1 })
	if len(done) > 0 {
		t.Fatal("the fill went ahead while the lease was held")
	}
	leases.lapse()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fill did not go ahead after the lease lapsed")
	}
}
