package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Leases are short-lived exclusive claims in a NATS KV bucket: one upstream
// fetch per blob, one run per job tick, across every process. A lease is
// refreshed while held and expires with the bucket TTL if its holder dies.
type Leases struct {
	kv    jetstream.KeyValue
	owner string
	every time.Duration
}

// NewLeases uses kv (created by Setup.Apply) on behalf of owner.
func NewLeases(kv jetstream.KeyValue, owner string) *Leases {
	return &Leases{kv: kv, owner: owner, every: LeaseTTL / 3}
}

// Acquire takes the lease on key. It returns ok=false, without error, when
// another process holds it. release gives it up; it is safe to call twice.
func (l *Leases) Acquire(ctx context.Context, key string) (release func(), ok bool, err error) {
	rev, err := l.kv.Create(ctx, key, []byte(l.owner))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("acquiring lease %s: %w", key, err)
	}
	stop := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(l.every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				uctx, cancel := context.WithTimeout(context.Background(), l.every)
				r, err := l.kv.Update(uctx, key, []byte(l.owner), rev)
				cancel()
				if err == nil {
					rev = r
				}
			}
		}
	}()
	return func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = l.kv.Delete(dctx, key, jetstream.LastRevision(rev))
		})
	}, true, nil
}

// Held reports whether anyone holds key.
func (l *Leases) Held(ctx context.Context, key string) (bool, error) {
	_, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return false, nil
	}
	return err == nil, err
}

// Released blocks until nobody holds key: it was released, or never
// held, or ctx ended (ctx's error). It watches the key in the bucket rather
// than polling it. A lease that lapses with a dead holder (the bucket TTL)
// is not announced by the server: a caller bounds the wait with ctx and
// looks again (Held, Acquire).
func (l *Leases) Released(ctx context.Context, key string) error {
	w, err := l.kv.Watch(ctx, key)
	if err != nil {
		return fmt.Errorf("watching lease %s: %w", key, err)
	}
	defer func() { _ = w.Stop() }()
	held := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("watching lease %s: watch ended", key)
			}
			switch {
			case e == nil: // the current value, if any, was delivered
				if !held {
					return nil
				}
			case e.Operation() == jetstream.KeyValuePut:
				held = true
			default: // deleted or purged: released
				return nil
			}
		}
	}
}

// Claim takes key once, without refreshing or releasing it: the claim
// lapses with the bucket TTL. It reports whether this call got it. Cron
// ticks use it so that each tick runs once across all workers.
func (l *Leases) Claim(ctx context.Context, key string) (bool, error) {
	_, err := l.kv.Create(ctx, key, []byte(l.owner))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claiming %s: %w", key, err)
	}
	return true, nil
}
