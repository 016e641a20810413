package events_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/events"
)

// newLeases returns two processes' lease services over one bucket of a
// real embedded JetStream server.
func newLeases(t *testing.T) (a, b *events.Leases) {
	t.Helper()
	js := runJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "leases", TTL: events.LeaseTTL, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return events.NewLeases(kv, "a"), events.NewLeases(kv, "b")
}

// TestReleasedWatchesTheLease: waiting for another process's lease returns
// at once for a free key, blocks while the lease is held, and returns as
// soon as the holder releases it (a watch, not a poll).
func TestReleasedWatchesTheLease(t *testing.T) {
	t.Parallel()
	a, b := newLeases(t)
	ctx := context.Background()
	if err := b.Released(ctx, "blob.sha256.free"); err != nil {
		t.Fatalf("free key: %v", err)
	}
	release, ok, err := a.Acquire(ctx, "blob.sha256.x")
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	if _, ok, _ := b.Acquire(ctx, "blob.sha256.x"); ok {
		t.Fatal("second process acquired a held lease")
	}
	done := make(chan error, 1)
	go func() { done <- b.Released(ctx, "blob.sha256.x") }()
	select {
	case err := <-done:
		t.Fatalf("Released returned while the lease is held: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("release noticed after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Released did not return after the release")
	}
	if rel, ok, err := b.Acquire(ctx, "blob.sha256.x"); err != nil || !ok {
		t.Fatalf("acquire after release: %v %v", ok, err)
	} else {
		rel()
	}
}

// TestReleasedHonoursContext: a wait on a held lease ends with its ctx.
func TestReleasedHonoursContext(t *testing.T) {
	t.Parallel()
	a, b := newLeases(t)
	release, ok, err := a.Acquire(context.Background(), "k")
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.Released(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Released = %v, want the deadline", err)
	}
}
