package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/cache/fill"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

var repo = store.Repo{Registry: "hub", Name: "app"}

// countingStore is the real filesystem store, counting the lookups a fill
// makes before its upstream GET.
type countingStore struct {
	*store.FS
	has, stat, open atomic.Int32
}

func (s *countingStore) HasBlob(ctx context.Context, d digest.Digest) (int64, error) {
	s.has.Add(1)
	return s.FS.HasBlob(ctx, d)
}

func (s *countingStore) StatBlob(ctx context.Context, r store.Repo, d digest.Digest) (int64, error) {
	s.stat.Add(1)
	return s.FS.StatBlob(ctx, r, d)
}

func (s *countingStore) OpenBlob(ctx context.Context, r store.Repo, d digest.Digest) (store.Blob, error) {
	s.open.Add(1)
	return s.FS.OpenBlob(ctx, r, d)
}

type env struct {
	up  *upstreamtest.Upstream
	st  *countingStore
	src connector.Source
	e   *fill.Engine
}

func newEnv(t *testing.T, cfg fill.Config) *env {
	t.Helper()
	up := upstreamtest.New(t)
	src, err := connector.New(connector.Config{Name: "up", URL: up.URL})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &countingStore{FS: fs}
	e, err := fill.New(st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Wait)
	return &env{up: up, st: st, src: src, e: e}
}

func (v *env) job(d digest.Digest) fill.Job {
	return fill.Job{Repo: repo, Digest: d, Sources: []connector.Source{v.src}}
}

// read follows f to the end.
func read(t *testing.T, f *fill.Fill) ([]byte, error) {
	t.Helper()
	_ = f.WaitStarted(context.Background())
	r, ok := f.Reader(nil)
	if !ok {
		<-f.Done()
		return nil, f.Err()
	}
	defer func() { _ = r.Close() }()
	return io.ReadAll(r)
}

// TestJoinCoalesces: concurrent callers of one blob share one download,
// each reading every byte while it arrives; the fill outlives its
// starter's ctx.
func TestJoinCoalesces(t *testing.T) {
	t.Parallel()
	for _, mem := range []int64{0, 1} { // in memory; through the store's spool
		v := newEnv(t, fill.Config{Memory: mem})
		data := upstreamtest.RandomGzip(300 << 10)
		d := v.up.AddBlob("app", data)
		v.up.SetFault(d.String(), upstreamtest.Fault{Delay: 100 * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		first, leader := v.e.Join(ctx, v.job(d))
		cancel() // the starter goes away; the fill goes on
		if !leader {
			t.Fatal("first caller did not lead")
		}
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f, leader := v.e.Join(context.Background(), v.job(d))
				if leader && f != first {
					return // the first fill ended already: a new one is fine
				}
				if got, err := read(t, f); err != nil || !bytes.Equal(got, data) {
					t.Errorf("reader: %d bytes, %v", len(got), err)
				}
			}()
		}
		wg.Wait()
		<-first.Done()
		if err := first.Err(); err != nil || !first.Fetched() {
			t.Fatalf("fill: %v, fetched %v", first.Err(), first.Fetched())
		}
		if n := v.up.Count("GET", "/blobs/"+d.String()); n != 1 {
			t.Errorf("memory %d: %d upstream GETs, want 1", mem, n)
		}
		if _, err := v.st.FS.StatBlob(context.Background(), repo, d); err != nil {
			t.Errorf("not stored: %v", err)
		}
	}
}

// TestLastByteWaitsForVerification: a body that does not hash to the
// digest never reaches a reader whole, and a reader of a range
// (WaitVerified) gets nothing at all.
func TestLastByteWaitsForVerification(t *testing.T) {
	t.Parallel()
	for _, mem := range []int64{0, 1} {
		v := newEnv(t, fill.Config{Memory: mem})
		data := upstreamtest.RandomGzip(200 << 10)
		d := v.up.AddBlob("app", data)
		v.up.SetFault(d.String(), upstreamtest.Fault{Corrupt: true})
		f, _ := v.e.Join(context.Background(), v.job(d))
		_ = f.WaitStarted(context.Background())
		ranged, ok := f.Reader(nil)
		if !ok {
			// On a loaded machine the fill may have failed before a reader
			// could join: then it must have failed on the digest, storing
			// nothing.
			<-f.Done()
			if err := f.Err(); !errors.Is(err, store.ErrDigestMismatch) {
				t.Fatalf("memory %d: no reader, fill error %v, want a digest mismatch", mem, err)
			}
			if _, err := v.st.FS.HasBlob(context.Background(), d); err == nil {
				t.Errorf("memory %d: corrupt blob stored", mem)
			}
			continue
		}
		if err := ranged.WaitVerified(context.Background()); !errors.Is(err, store.ErrDigestMismatch) {
			t.Errorf("memory %d: WaitVerified = %v, want a digest mismatch", mem, err)
		}
		_ = ranged.Close()
		got, err := read(t, f)
		if err == nil || len(got) >= len(data) {
			t.Errorf("memory %d: a reader got %d of %d bytes, error %v", mem, len(got), len(data), err)
		}
		if _, err := v.st.FS.HasBlob(context.Background(), d); err == nil {
			t.Errorf("memory %d: corrupt blob stored", mem)
		}
	}
}

// TestColdFillLooksOnce: a fill of a blob nobody stored looks at the store
// once (is the content there?) before its upstream GET; a fill of content
// stored already adopts it and downloads nothing.
func TestColdFillLooksOnce(t *testing.T) {
	t.Parallel()
	v := newEnv(t, fill.Config{})
	data := upstreamtest.RandomGzip(1000)
	d := v.up.AddBlob("app", data)
	adopted := 0
	j := v.job(d)
	j.Adopt = func(context.Context) (bool, error) { adopted++; return true, nil }
	f, _ := v.e.Join(context.Background(), j)
	<-f.Done()
	if err := f.Err(); err != nil {
		t.Fatal(err)
	}
	if has, stat, open := v.st.has.Load(), v.st.stat.Load(), v.st.open.Load(); has != 1 || stat != 0 || open != 0 || adopted != 0 {
		t.Errorf("cold fill: HasBlob %d, StatBlob %d, OpenBlob %d, Adopt %d; want 1, 0, 0, 0", has, stat, open, adopted)
	}
	// Now stored: another registry's fill adopts it.
	j.Repo = store.Repo{Registry: "other", Name: "app"}
	f, _ = v.e.Join(context.Background(), j)
	<-f.Done()
	if f.Err() != nil || f.Fetched() || adopted != 1 {
		t.Errorf("stored: err %v, fetched %v, adopted %d", f.Err(), f.Fetched(), adopted)
	}
	if n := v.up.Count("GET", "/blobs/"+d.String()); n != 1 {
		t.Errorf("%d upstream GETs, want 1", n)
	}
}

// fakeLeases injects another process holding every lease until release;
// with silent, its release is never announced (a lease that lapsed with a
// dead holder, as a NATS KV entry expiring with the bucket TTL).
type fakeLeases struct {
	mu     sync.Mutex
	held   bool
	silent bool
	freed  chan struct{}
	waits  atomic.Int32
}

func (l *fakeLeases) Acquire(context.Context, string) (func(), bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held {
		return nil, false, nil
	}
	return func() {}, true, nil
}

func (l *fakeLeases) Released(ctx context.Context, _ string) error {
	l.waits.Add(1)
	if l.silent {
		<-ctx.Done()
		return ctx.Err()
	}
	select {
	case <-l.freed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *fakeLeases) release() {
	l.mu.Lock()
	l.held = false
	l.mu.Unlock()
	if !l.silent {
		close(l.freed)
	}
}

// TestLeaseWait: a fill waiting for another process's lease goes ahead as
// soon as the release is announced (long before the recheck), and notices
// an unannounced lapse at the recheck.
func TestLeaseWait(t *testing.T) {
	t.Parallel()
	for _, silent := range []bool{false, true} {
		leases := &fakeLeases{held: true, silent: silent, freed: make(chan struct{})}
		recheck := time.Hour
		if silent {
			recheck = 20 * time.Millisecond
		}
		v := newEnv(t, fill.Config{Leases: leases, Recheck: recheck})
		d := v.up.AddBlob("app", upstreamtest.RandomGzip(3000))
		f, _ := v.e.Join(context.Background(), v.job(d))
		deadline := time.Now().Add(10 * time.Second)
		for leases.waits.Load() < 2 && !(leases.waits.Load() > 0 && !silent) {
			if time.Now().After(deadline) {
				t.Fatal("the fill did not wait for the lease")
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case <-f.Done():
			t.Fatalf("silent %v: the fill went ahead while the lease was held", silent)
		default:
		}
		leases.release()
		select {
		case <-f.Done():
			if err := f.Err(); err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("silent %v: the fill did not go ahead once the lease was free", silent)
		}
	}
}

// TestFillEndsWithCtxWhileLeaseHeld: a fill waiting for a lease that is
// never freed ends with its timeout, and every waiter sees the error.
func TestFillEndsWithCtxWhileLeaseHeld(t *testing.T) {
	t.Parallel()
	leases := &fakeLeases{held: true, freed: make(chan struct{})}
	v := newEnv(t, fill.Config{Leases: leases, Timeout: 100 * time.Millisecond})
	d := v.up.AddBlob("app", upstreamtest.RandomGzip(3000))
	f, _ := v.e.Join(context.Background(), v.job(d))
	select {
	case <-f.Done():
		if !errors.Is(f.Err(), context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the deadline", f.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fill did not end")
	}
	if n := v.up.Count("GET", "/blobs/"+d.String()); n != 0 {
		t.Errorf("%d upstream GETs under another process's lease", n)
	}
}
