package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/store"
)

// BenchmarkWholeImageLocal measures the time from a single-platform cold
// pull to "every blob of every platform is local", for 2 platforms × 10
// layers × 16 MiB from an upstream that sends 64 MiB/s per connection,
// against the sum and the max of the layer download times.
func BenchmarkWholeImageLocal(b *testing.B) {
	const layers, size, rate = 10, 16 << 20, 64 << 20
	for range b.N {
		b.StopTimer()
		e := newWorkerEnvTB(b)
		ix := e.up.AddIndex("big", "v1", []string{"linux/amd64", "linux/arm64"}, repeat(size, layers)...)
		e.up.SetRate(rate)
		// Baseline: one layer straight from the upstream.
		one := ix.Children["linux/amd64"].Layers[0]
		t0 := time.Now()
		resp, err := http.Get(e.up.URL + "/v2/big/blobs/" + one.String())
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		layerTime := time.Since(t0)

		pub := events.NewPublisher(e.bus.js, e.bus.subj, slog.New(slog.DiscardHandler), e.m, 1000)
		ctx, cancel := context.WithCancel(context.Background())
		go pub.Run(ctx)
		serve := e.newCache(e.bus, cache.WithMissHook(missHook(pub))).Serving().Request("")
		e.startWorker()
		repo := store.Repo{Registry: "hub", Name: "big"}
		b.StartTimer()
		start := time.Now()
		// The client pulls linux/amd64: tag, index, manifest, then its
		// layers three at a time, as docker does.
		ti, err := serve.Tag(ctx, repo, "v1")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := serve.Manifest(ctx, repo, ti.Digest); err != nil {
			b.Fatal(err)
		}
		img := ix.Children["linux/amd64"]
		if _, err := serve.Manifest(ctx, repo, img.Digest); err != nil {
			b.Fatal(err)
		}
		sem := make(chan struct{}, 3)
		var wg sync.WaitGroup
		for _, d := range append(img.Layers, img.Config) {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				rc, err := serve.OpenBlob(ctx, repo, d)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, rc)
				rc.Close()
			}()
		}
		wg.Wait()
		pulled := time.Since(start)
		for !e.hasAll(repo, ix.Blobs()) {
			time.Sleep(5 * time.Millisecond)
		}
		whole := time.Since(start)
		b.StopTimer()
		cancel()
		n := len(ix.Blobs())
		b.ReportMetric(whole.Seconds(), "s-whole-image")
		b.ReportMetric(pulled.Seconds(), "s-client-pull")
		b.ReportMetric(layerTime.Seconds(), "s-one-layer")
		b.ReportMetric(whole.Seconds()/(layerTime.Seconds()*float64(2*layers)), "x-of-sum")
		b.ReportMetric(whole.Seconds()/layerTime.Seconds(), "x-of-max")
		for _, d := range ix.Blobs() {
			want := 1
			if d == one {
				want = 2 // the baseline fetched it too
			}
			if c := e.up.Count("GET", "/blobs/"+d.String()); c != want {
				b.Errorf("blob %s fetched %d times by regwarm", d, c-want+1)
			}
		}
		b.ReportMetric(float64(n), "blobs")
	}
}

func repeat(v, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// BenchmarkMissPublish measures what publishing a miss event adds to the
// pull path: one Miss call per op, with the publisher draining to a real
// JetStream. It reports p50 and p99 of the call.
func BenchmarkMissPublish(b *testing.B) {
	e := newWorkerEnvTB(b)
	pub := events.NewPublisher(e.bus.js, e.bus.subj, slog.New(slog.DiscardHandler), e.m, events.DefaultBuffer)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pub.Run(ctx)
	lat := make([]time.Duration, 0, b.N)
	ev := events.MissEvent{Registry: "hub", Repository: "library/alpine", Reference: "3.20", Kind: "manifest", Connector: "up",
		Digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000", Time: time.Now()}
	b.ResetTimer()
	for i := range b.N {
		ev.Reference = string(rune('a' + i%26))
		t := time.Now()
		pub.Miss(ev)
		lat = append(lat, time.Since(t))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "ns-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "ns-p99")
}

// BenchmarkCachedSyncs measures how many sync requests per second one
// worker (concurrency 4) finishes for an image that is already cached:
// each still revalidates its tag with a HEAD upstream.
func BenchmarkCachedSyncs(b *testing.B) {
	e := newWorkerEnvTB(b)
	e.up.AddIndex("cached", "v1", []string{"linux/amd64", "linux/arm64"}, 1000, 1000, 1000)
	e.startWorker()
	var done atomic.Int64
	sub, err := e.nc.Subscribe(e.bus.subj.SyncDone(), func(*nats.Msg) { done.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Warm it once.
	e.publish(e.bus.subj.Sync(), []byte("hub/cached:v1"))
	for done.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	const n = 2000
	b.ResetTimer()
	for range b.N {
		start := done.Load()
		t0 := time.Now()
		for range n {
			if _, err := e.bus.js.PublishAsync(e.bus.subj.Sync(), []byte("hub/cached:v1")); err != nil {
				b.Fatal(err)
			}
		}
		<-e.bus.js.PublishAsyncComplete()
		for done.Load() < start+n {
			time.Sleep(time.Millisecond)
		}
		b.ReportMetric(n/time.Since(t0).Seconds(), "syncs/s")
	}
}
