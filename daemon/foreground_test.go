package daemon

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// TestColdPlatformPullQueuesOneJob is `regwarm run` in one process: a
// client pulls one platform of a two-platform image cold through the cache
// whose misses are published, and a worker over the same cache warms the
// rest. The pull queues exactly one job (the tag's), not one per manifest
// and blob, and the job's own fetches queue none.
func TestColdPlatformPullQueuesOneJob(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	pub := events.NewPublisher(e.bus.js, e.bus.subj, slog.New(slog.DiscardHandler), e.m, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pub.Run(ctx)
	c := e.newCache(e.bus, cache.WithMissHook(missHook(pub)))
	ix := e.up.AddIndex("multi", "v1", []string{"linux/amd64", "linux/arm64"}, 100<<10, 300<<10)
	repo := store.Repo{Registry: "hub", Name: "multi"}
	r := e.watch()
	pull := c.Serving().Request("")

	ti, err := pull.Tag(ctx, repo, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pull.Manifest(ctx, repo, ti.Digest); err != nil {
		t.Fatal(err)
	}
	amd := ix.Children["linux/amd64"]
	if _, err := pull.Manifest(ctx, repo, amd.Digest); err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]digest.Digest{amd.Config}, amd.Layers...) {
		b, err := pull.OpenBlob(ctx, repo, d)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, b)
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	w := &Worker{conf: e.cfg.Worker, bus: e.bus, syncer: jobs.NewSyncer(e.cfg, c), log: slog.New(slog.DiscardHandler), metrics: e.m}
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	defer func() { stop(); <-done }()

	r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Digest == ix.Digest.String() && s.Error == "" })
	deadline := time.Now().Add(10 * time.Second)
	for !e.hasAll(repo, ix.Blobs()) {
		if time.Now().After(deadline) {
			t.Fatal("the job did not warm every platform")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.Wait()
	st, err := e.bus.js.Stream(ctx, e.bus.subj.Stream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != 1 {
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Fatalf("%d jobs queued, want 1 (the image's); results: %+v", info.State.LastSeq, r.got)
	}
}

// TestWorkerDelaysMissJobs: a worker in its own process holds a
// miss-triggered job until the miss is missDelay old, so the pull that
// caused it goes first.
func TestWorkerDelaysMissJobs(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	img := e.up.AddImage("app", "v1", 1000)
	r := e.watch()
	const delay = 400 * time.Millisecond
	w := &Worker{conf: e.cfg.Worker, bus: e.bus, syncer: jobs.NewSyncer(e.cfg, e.cache), log: slog.New(slog.DiscardHandler),
		metrics: e.m, missDelay: delay}
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	defer func() { stop(); <-done }()

	start := time.Now()
	e.publish(e.bus.subj.Miss("hub"), []byte(`{"registry":"hub","repository":"app","reference":"v1","digest":"`+
		img.Digest.String()+`","kind":"manifest"}`))
	r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Digest == img.Digest.String() && s.Error == "" })
	if took := time.Since(start); took < delay {
		t.Fatalf("the miss-triggered job ran %v after the miss, before the %v delay", took, delay)
	}
}
