package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
	"github.com/regwarm/regwarm/jobs"
)

// runNATS starts an in-process JetStream server for one test.
func runNATS(t testing.TB, dir string, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true, MaxPayload: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats did not start")
	}
	t.Cleanup(s.Shutdown)
	return s
}

type workerEnv struct {
	t     testing.TB
	ns    *server.Server
	up    *upstreamtest.Upstream
	cfg   *config.Config
	store *store.FS
	m     *metrics.Set
	bus   *bus
	nc    *nats.Conn
	cache *cache.Cache
}

func newWorkerEnv(t *testing.T, extra string) *workerEnv { return newWorkerEnvExtra(t, extra) }

// newWorkerEnvTB is newWorkerEnv for benchmarks.
func newWorkerEnvTB(b *testing.B) *workerEnv { return newWorkerEnvExtra(b, "") }

func newWorkerEnvExtra(t testing.TB, extra string) *workerEnv {
	t.Helper()
	ns := runNATS(t, t.TempDir(), -1)
	up := upstreamtest.New(t)
	cfg, err := config.Parse([]byte(strings.ReplaceAll(`version: 1
worker: {concurrency: 4, max_deliveries: 2}
registries:
  - {name: hub, connectors: [up], sync: {platforms: [linux/amd64, linux/arm64]}}
  - {name: local, push: true}
connectors:
  - {name: up, url: "UP", host: up.example}
`+extra, "UP", up.URL)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &workerEnv{t: t, ns: ns, up: up, cfg: cfg, store: st, m: metrics.New(prometheus.NewRegistry(), metrics.Labels{})}
	e.bus = e.newBus("test")
	e.cache = e.newCache(e.bus)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e.nc = nc
	return e
}

func (e *workerEnv) newBus(owner string) *bus {
	e.t.Helper()
	b, err := newBus(e.ns.ClientURL(), events.Auth{}, natsSetup(e.cfg), owner, slog.New(slog.DiscardHandler))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(func() { cancel(); b.close() })
	go b.run(ctx, owner)
	select {
	case <-b.ready:
	case <-time.After(10 * time.Second):
		e.t.Fatal("bus not ready")
	}
	return b
}

func (e *workerEnv) newCache(b *bus, opts ...cache.Option) *cache.Cache {
	e.t.Helper()
	opts = append([]cache.Option{cache.WithMetrics(e.m), cache.WithLeases(b)}, opts...)
	cc, err := CacheConfig(e.cfg, connector.WithMetrics(e.m))
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := cache.New(cc, e.store, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Wait)
	return c
}

// startWorker runs a worker until the test ends.
func (e *workerEnv) startWorker() {
	e.t.Helper()
	w := &Worker{conf: e.cfg.Worker, bus: e.bus, syncer: jobs.NewSyncer(e.cfg, e.cache),
		log: slog.New(slog.DiscardHandler), metrics: e.m}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
}

// results collects sync results published on done and failed.
type results struct {
	mu  sync.Mutex
	got []events.SyncResult
}

func (e *workerEnv) watch() *results {
	e.t.Helper()
	r := &results{}
	for _, subj := range []string{e.bus.subj.SyncDone(), e.bus.subj.SyncFailed()} {
		sub, err := e.nc.Subscribe(subj, func(m *nats.Msg) {
			var res events.SyncResult
			if err := json.Unmarshal(m.Data, &res); err != nil {
				e.t.Errorf("bad result on %s: %q", m.Subject, m.Data)
				return
			}
			r.mu.Lock()
			r.got = append(r.got, res)
			r.mu.Unlock()
		})
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := e.nc.Flush(); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// wait returns the first result matching fn within timeout.
func (r *results) wait(t *testing.T, timeout time.Duration, fn func(events.SyncResult) bool) events.SyncResult {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, res := range r.got {
			if fn(res) {
				r.mu.Unlock()
				return res
			}
		}
		r.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Fatalf("no matching result within %s; got %+v", timeout, r.got)
	return events.SyncResult{}
}

func (e *workerEnv) publish(subject string, data []byte) uint64 {
	e.t.Helper()
	ack, err := e.bus.js.Publish(context.Background(), subject, data)
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Sequence
}

func (e *workerEnv) hasAll(repo store.Repo, ds []digest.Digest) bool {
	for _, d := range ds {
		if _, err := e.store.StatBlob(context.Background(), repo, d); err != nil {
			return false
		}
	}
	return true
}

func TestWorkerSyncsWholeImage(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	ix := e.up.AddIndex("team/app", "v1", []string{"linux/amd64", "linux/arm64", "linux/s390x"}, 300<<10, 10<<10)
	r := e.watch()
	// Queued while no worker runs; kept by the stream.
	seq := e.publish(e.bus.subj.Sync(), []byte("up.example/team/app:v1"))
	e.startWorker()
	res := r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Seq == seq })
	if res.Error != "" || res.Digest != ix.Digest.String() {
		t.Fatalf("result %+v", res)
	}
	if res.Manifests != 3 || res.BlobsFetched != 6 || res.BlobsPresent != 0 {
		t.Fatalf("counts %+v, want 3 manifests (index + 2 allowed platforms), 6 blobs fetched", res)
	}
	repo := store.Repo{Registry: "hub", Name: "team/app"}
	for p, img := range ix.Children {
		want := p != "linux/s390x"
		if got := e.hasAll(repo, append(img.Layers, img.Config)); got != want {
			t.Errorf("platform %s present=%v, want %v (sync.platforms)", p, got, want)
		}
	}
	// Idempotent: a second sync only counts.
	seq = e.publish(e.bus.subj.Sync(), []byte(`{"image":"hub/team/app:v1","referrers":false}`))
	res = r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Seq == seq })
	if res.Error != "" || res.BlobsFetched != 0 || res.BlobsPresent != 6 {
		t.Fatalf("second sync %+v", res)
	}
}

func TestWorkerBadMessages(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.startWorker()
	r := e.watch()
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"garbage", []byte{0xff, 0xfe, 0x00, 0x01}, "not UTF-8"},
		{"wrong types", []byte(`{"image": 5}`), "cannot unmarshal"},
		{"unknown field", []byte(`{"image": "hub/a:b", "url": "http://x"}`), "unknown field"},
		{"huge", []byte(strings.Repeat("a", 1<<20)), "limit is"},
		{"unconfigured host", []byte("nothere.example/x:y"), "no connector has host"},
		{"unknown registry", []byte("nope/x:y"), "no registry named"},
		{"url", []byte("http://127.0.0.1:1/x"), "a URL is not an image name"},
		{"empty", []byte("  "), "empty message"},
		{"bad platform", []byte(`{"image":"hub/a:b","platforms":["linux"]}`), "platforms[0]"},
	}
	start := time.Now()
	for _, tt := range tests {
		seq := e.publish(e.bus.subj.Sync(), tt.data)
		res := r.wait(t, 5*time.Second, func(s events.SyncResult) bool { return s.Seq == seq })
		if !strings.Contains(res.Error, tt.want) {
			t.Errorf("%s: error %q, want it to mention %q", tt.name, res.Error, tt.want)
		}
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("bad messages took %s: they must fail without retries", time.Since(start))
	}
	// A miss event that is not valid.
	seq := e.publish(e.bus.subj.Miss("hub"), []byte(`{"registry":"hub","repository":"../x","digest":"sha256:zz","kind":"blob"}`))
	res := r.wait(t, 5*time.Second, func(s events.SyncResult) bool { return s.Seq == seq })
	if !strings.Contains(res.Error, "digest") {
		t.Errorf("bad miss event: %q", res.Error)
	}
	// The worker still works.
	img := e.up.AddImage("ok", "v1", 1000)
	seq = e.publish(e.bus.subj.Sync(), []byte("hub/ok:v1"))
	if res := r.wait(t, 5*time.Second, func(s events.SyncResult) bool { return s.Seq == seq }); res.Error != "" || res.Digest != img.Digest.String() {
		t.Fatalf("good sync after bad ones: %+v", res)
	}
}

func TestWorkerRetriesThenGivesUp(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.startWorker()
	r := e.watch()
	img := e.up.AddImage("flaky", "v1", 1000)
	e.up.SetFault(img.Layers[0].String(), upstreamtest.Fault{Status: 500})
	seq := e.publish(e.bus.subj.Sync(), []byte("hub/flaky:v1"))
	res := r.wait(t, 15*time.Second, func(s events.SyncResult) bool { return s.Seq == seq })
	if !strings.Contains(res.Error, "gave up after 2 deliveries") || res.Deliveries != 2 {
		t.Fatalf("result %+v", res)
	}
	if n := e.up.Count("GET", "/blobs/"+img.Layers[0].String()); n != 2 {
		t.Fatalf("upstream asked %d times, want once per delivery (2)", n)
	}
	if got := testutil.ToFloat64(e.m.SyncJobs.WithLabelValues(metrics.ResultFailed)); got != 1 {
		t.Fatalf("failed jobs %v", got)
	}
}

func TestSyncClientReplyTo(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.startWorker()
	img := e.up.AddImage("cli", "v1", 1000)
	out, err := events.RequestSyncs(context.Background(), e.nc, e.bus.js, e.bus.subj,
		[]events.SyncRequest{{Image: "hub/cli:v1"}, {Image: "hub/cli:missing"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !out[0].Done || out[0].Result.Digest != img.Digest.String() || out[0].Seq == 0 {
		t.Errorf("good image: %+v", out[0])
	}
	if out[1].Done || out[1].Result.Error == "" {
		t.Errorf("missing tag: %+v", out[1])
	}
}

func TestMissEventsWarmOtherPlatforms(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	pub := events.NewPublisher(e.bus.js, e.bus.subj, slog.New(slog.DiscardHandler), e.m, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pub.Run(ctx)
	serveCache := e.newCache(e.bus, cache.WithMissHook(missHook(pub)))
	ix := e.up.AddIndex("multi", "v1", []string{"linux/amd64", "linux/arm64"}, 200<<10)
	repo := store.Repo{Registry: "hub", Name: "multi"}
	r := e.watch()
	// A client pulls the tag and one platform's manifest only.
	pull := serveCache.Serving().Request("pull-4711")
	ti, err := pull.Tag(ctx, repo, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pull.Manifest(ctx, repo, ti.Digest); err != nil {
		t.Fatal(err)
	}
	e.startWorker()
	deadline := time.Now().Add(10 * time.Second)
	for !e.hasAll(repo, ix.Blobs()) {
		if time.Now().After(deadline) {
			t.Fatal("worker did not warm every platform after the miss")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, d := range ix.Blobs() {
		if n := e.up.Count("GET", "/blobs/"+d.String()); n != 1 {
			t.Errorf("blob %s fetched %d times", d, n)
		}
	}
	// The pull's request id follows the miss into the worker's result.
	res := r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Digest == ix.Digest.String() })
	if res.RequestID != "pull-4711" || res.Error != "" {
		t.Fatalf("result of the miss-triggered sync: %+v", res)
	}
}

func TestLeasesFetchOnceAcrossProcesses(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	d := e.up.AddBlob("big", upstreamtest.RandomGzip(8<<20))
	e.up.SetFault(d.String(), upstreamtest.Fault{Delay: 200 * time.Millisecond})
	// Two "processes": separate buses and caches over one shared store.
	caches := []*cache.Cache{e.cache, e.newCache(e.newBus("other"))}
	repo := store.Repo{Registry: "hub", Name: "big"}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := caches[i%2].Warming().Fetch(context.Background(), repo, d)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := e.up.Count("GET", "/blobs/"+d.String()); n != 1 {
		t.Fatalf("fetched %d times across two processes", n)
	}
}

func TestPublisherSurvivesNATSOutage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ns := runNATS(t, dir, -1)
	url := ns.ClientURL()
	cfg := config.Default()
	b, err := newBus(url, events.Auth{}, natsSetup(cfg), "pub", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.run(ctx, "pub")
	<-b.ready
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	pub := events.NewPublisher(b.js, b.subj, slog.New(slog.DiscardHandler), m, 5)
	go pub.Run(ctx)

	ns.Shutdown()
	ns.WaitForShutdown()
	start := time.Now()
	for i := range 20 {
		pub.Miss(events.MissEvent{Registry: "hub", Repository: "x", Digest: digest.FromString(string(rune(i))).String(), Kind: "blob"})
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("Miss blocked for %s while NATS was down", d)
	}
	dropped := testutil.ToFloat64(m.EventsPublished.WithLabelValues(metrics.ResultDropped))
	if dropped < 14 {
		t.Fatalf("dropped %v of 20 with a buffer of 5", dropped)
	}
	// NATS comes back on the same address and store: buffered events flow.
	_, p, _ := net.SplitHostPort(strings.TrimPrefix(url, "nats://"))
	port, _ := strconv.Atoi(p)
	runNATS(t, dir, port)
	deadline := time.Now().Add(15 * time.Second)
	for testutil.ToFloat64(m.EventsPublished.WithLabelValues(metrics.ResultOK))+dropped < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("published %v after NATS returned", testutil.ToFloat64(m.EventsPublished.WithLabelValues(metrics.ResultOK)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWorkerSurvivesConsumerDeletion(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.startWorker()
	r := e.watch()
	img := e.up.AddImage("again", "v1", 1000)
	seq := e.publish(e.bus.subj.Sync(), []byte("hub/again:v1"))
	r.wait(t, 5*time.Second, func(s events.SyncResult) bool { return s.Seq == seq })
	// Someone deletes the consumer (and so the worker's subscription).
	if err := e.bus.js.DeleteConsumer(context.Background(), e.bus.subj.Stream(), e.bus.subj.Consumer()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	seq = e.publish(e.bus.subj.Sync(), []byte("hub/again:v1"))
	if res := r.wait(t, 15*time.Second, func(s events.SyncResult) bool { return s.Seq == seq }); res.Digest != img.Digest.String() {
		t.Fatalf("after consumer deletion: %+v", res)
	}
}

// lockedBuffer is a bytes.Buffer safe for a logger and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWorkerLogsBlobSync: a blob miss's sync is logged and published with
// the blob as digest, the repository as image and no manifest count.
func TestWorkerLogsBlobSync(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	img := e.up.AddImage("team/blob", "v1", 10<<10)
	layer := img.Layers[0]
	var logs lockedBuffer
	w := &Worker{conf: e.cfg.Worker, bus: e.bus, syncer: jobs.NewSyncer(e.cfg, e.cache),
		log: slog.New(slog.NewTextHandler(&logs, nil)), metrics: e.m}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r := e.watch()
	ev, err := json.Marshal(events.MissEvent{Registry: "hub", Repository: "team/blob", Digest: layer.String(), Kind: "blob"})
	if err != nil {
		t.Fatal(err)
	}
	seq := e.publish(e.bus.subj.Miss("hub"), ev)
	res := r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Seq == seq })
	if res.Error != "" || res.Digest != layer.String() || res.BlobsFetched != 1 {
		t.Fatalf("blob sync result %+v, want digest %s and 1 blob fetched", res, layer)
	}
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `msg="sync done"`) {
			line = l
		}
	}
	for _, want := range []string{"image=hub/team/blob ", "kind=blob", "digest=" + layer.String()} {
		if !strings.Contains(line, want) {
			t.Errorf("sync done log lacks %q: %s", want, line)
		}
	}
	if strings.Contains(line, "manifests=") {
		t.Errorf("blob sync logged a manifest count: %s", line)
	}
}

// TestWorkerReplyToOnlyInbox: a Regwarm-Reply-To header naming anything
// but an _INBOX.> subject (a KV key, the JetStream API, a job) gets
// nothing from the worker, which still publishes the normal event.
func TestWorkerReplyToOnlyInbox(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.startWorker()
	r := e.watch()
	e.up.AddImage("reply", "v1", 100)
	got := make(chan string, 16)
	for _, subj := range []string{"$KV.regwarm_leases.>", "$JS.API.>", "regwarm.jobs.run.>", "_INBOX.>"} {
		sub, err := e.nc.Subscribe(subj, func(m *nats.Msg) {
			if strings.Contains(string(m.Data), `"image"`) { // a sync result, not JetStream traffic
				got <- m.Subject
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, reply := range []string{"$KV.regwarm_leases.job.gc", "$JS.API.STREAM.DELETE.REGWARM_WORK", "regwarm.jobs.run.gc", "_INBOX.ok.1"} {
		msg := nats.NewMsg(e.bus.subj.Sync())
		msg.Data = []byte("hub/reply:v1")
		msg.Header.Set(events.ReplyHeader, reply)
		ack, err := e.bus.js.PublishMsg(context.Background(), msg)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}
	for _, seq := range seqs {
		r.wait(t, 20*time.Second, func(res events.SyncResult) bool { return res.Seq == seq })
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "_INBOX.ok.1" {
			t.Fatalf("the worker published a result to %s", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no result on the _INBOX reply subject")
	}
	select {
	case s := <-got:
		t.Fatalf("the worker published a result to %s", s)
	case <-time.After(200 * time.Millisecond):
	}
	if !ReplyAllowed("_INBOX.abc.def") || ReplyAllowed("_INBOX.>") || ReplyAllowed("_INBOX") || ReplyAllowed("$KV.x.y") {
		t.Error("ReplyAllowed accepts the wrong subjects")
	}
}
