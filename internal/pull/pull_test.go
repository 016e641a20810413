package pull

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/store"
)

var repo = store.Repo{Registry: "hub", Name: "library/alpine"}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newFS(t testing.TB) *store.FS {
	t.Helper()
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func lastPulled(t *testing.T, st store.PullRecorder) map[digest.Digest]time.Time {
	t.Helper()
	got, err := st.LastPulled(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// countingStore counts RecordPulls calls and can fail them.
type countingStore struct {
	store.PullRecorder
	mu    sync.Mutex
	calls int
	fail  bool
}

func (c *countingStore) RecordPulls(ctx context.Context, r store.Repo, p map[digest.Digest]time.Time) error {
	c.mu.Lock()
	c.calls++
	fail := c.fail
	c.mu.Unlock()
	if fail {
		return errors.New("disk on fire")
	}
	return c.PullRecorder.RecordPulls(ctx, r, p)
}

func TestRecorderBatchesAndFlushes(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 250_000_000, time.UTC)}
	st := &countingStore{PullRecorder: newFS(t)}
	r, err := New(st, WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	a, b := digest.FromString("a"), digest.FromString("b")
	for range 100 {
		r.Pulled(repo, a)
	}
	clk.add(3 * time.Second)
	r.Pulled(repo, a)
	r.Pulled(repo, b)
	if got := lastPulled(t, st); len(got) != 0 {
		t.Fatalf("store written before a flush: %v", got)
	}
	if n := r.Pending(); n != 2 {
		t.Fatalf("pending %d, want 2 (repeated pulls coalesce)", n)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st.calls != 1 {
		t.Fatalf("%d store writes, want 1 for one repository", st.calls)
	}
	want := time.Date(2026, 3, 1, 12, 0, 3, 0, time.UTC)
	got := lastPulled(t, st)
	if !got[a].Equal(want) || !got[b].Equal(want) {
		t.Fatalf("last pulled %v, want both %v", got, want)
	}
	if err := r.Flush(context.Background()); err != nil || st.calls != 1 {
		t.Fatalf("empty flush: err %v, %d writes, want none", err, st.calls)
	}
}

func TestRecorderDropsWhenFull(t *testing.T) {
	t.Parallel()
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	failed := prometheus.NewCounter(prometheus.CounterOpts{Name: "failed"})
	st := &countingStore{PullRecorder: newFS(t)}
	r, err := New(st, WithCapacity(2), WithCounters(dropped, failed))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	r.Pulled(repo, a)
	r.Pulled(repo, b)
	r.Pulled(repo, c) // full
	r.Pulled(repo, a) // already buffered: no drop
	if v := testutil.ToFloat64(dropped); v != 1 {
		t.Fatalf("dropped %v, want 1", v)
	}
	// A failed flush keeps the pulls for the next one.
	st.fail = true
	if err := r.Flush(context.Background()); err == nil {
		t.Fatal("flush into a failing store: no error")
	}
	if n := r.Pending(); n != 2 {
		t.Fatalf("after a failed flush %d pending, want 2", n)
	}
	st.fail = false
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := lastPulled(t, st); len(got) != 2 {
		t.Fatalf("after retry: %v, want a and b", got)
	}
}

func TestRecorderRunFlushesPeriodicallyAndAtShutdown(t *testing.T) {
	t.Parallel()
	st := newFS(t)
	r, err := New(st, WithInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	a := digest.FromString("a")
	r.Pulled(repo, a)
	deadline := time.Now().Add(5 * time.Second)
	for len(lastPulled(t, st)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a pull was not flushed by Run")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Shutdown flushes what is left, whatever the interval.
	slow, err := New(st, WithInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan struct{})
	go func() { slow.Run(sctx); close(sdone) }()
	b := digest.FromString("b")
	slow.Pulled(repo, b)
	scancel()
	<-sdone
	if _, ok := lastPulled(t, st)[b]; !ok {
		t.Fatal("pull buffered at shutdown was lost")
	}
	cancel()
	<-done
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	st := newFS(t)
	for name, o := range map[string]Option{
		"clock": WithClock(nil), "interval": WithInterval(0), "capacity": WithCapacity(0), "logger": WithLogger(nil),
	} {
		if _, err := New(st, o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := New(nil); err == nil {
		t.Error("nil store: no error")
	}
}

// BenchmarkPulled is the whole cost Recorder adds to a manifest GET.
func BenchmarkPulled(b *testing.B) {
	r, err := New(newFS(b))
	if err != nil {
		b.Fatal(err)
	}
	ds := []digest.Digest{digest.FromString("a"), digest.FromString("b"), digest.FromString("c")}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Pulled(repo, ds[i%len(ds)])
			i++
		}
	})
}

// BenchmarkPulledWhileFlushing times each Pulled call while Run flushes to
// a real store every millisecond (1000 times more often than serve does),
// and reports the p99: the worst cost a manifest GET sees from tracking.
func BenchmarkPulledWhileFlushing(b *testing.B) {
	r, err := New(newFS(b), WithInterval(time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	ds := make([]digest.Digest, 64)
	for i := range ds {
		ds[i] = digest.FromString(string(rune('a' + i)))
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		r.Pulled(repo, ds[i%len(ds)])
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	cancel()
	<-done
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds())/1e3, "max-µs")
}
