package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// platformOnly returns the config and the layers that only platform p has.
func platformOnly(im *harness.Image, p string) []string {
	m := im.Platform(p)
	return append([]string{m.Config}, m.Layers[1:]...)
}

// TestWorkerKilledMidLayer kills -9 the worker that is downloading a
// 200 MiB layer (through a 50 MiB/s proxy). Another worker finishes the
// job after JetStream redelivers it; the killed download never shows up as
// a blob, and the final blob is complete and correct. Redelivery waits for
// the consumer's AckWait (worker.ack_wait, 10s here) after the last
// InProgress, and the dead worker's fetch lease lapses within LeaseTTL.
func TestWorkerKilledMidLayer(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	const size, rate = 200 << 20, 50 << 20
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/huge"
	d := pushBlobHTTP(t, up.URL(), repo, harness.RandomBytes(901, size))
	pushManifestHTTP(t, up.URL(), repo, "v1", d, size)
	th := startThrottle(t, up, rate)
	cfg := workerConfig(ns.URL(), th.URL)
	dataDir := filepath.Join(t.TempDir(), "data")
	a := harness.StartWorker(t, "worker-a", cfg, harness.ConfigVars{DataDir: dataDir})
	events := watchEvents(t, ns.URL())
	js := harness.JetStream(t, ns.URL())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, syncSubject, []byte("hub/"+repo+":v1"))
	if err != nil {
		t.Fatalf("publish sync: %v", err)
	}
	sentAtLeast := func(n int64) func() error {
		return func() error {
			if _, sent, _ := th.stats(d); sent < n {
				return fmt.Errorf("%d MiB of the layer sent", sent>>20)
			}
			return nil
		}
	}
	harness.Eventually(t, 30*time.Second, "worker A downloads the layer", sentAtLeast(10<<20))
	b := harness.StartWorker(t, "worker-b", cfg, harness.ConfigVars{DataDir: dataDir})
	harness.Eventually(t, 30*time.Second, "worker A is halfway", sentAtLeast(size/2))
	a.Kill()
	killed := time.Now()
	gets, sent, _ := th.stats(d)
	if gets != 1 || sent >= size {
		t.Fatalf("at the kill: %d GETs, %d of %d bytes sent; want one unfinished download", gets, sent, size)
	}
	t.Logf("killed worker A (pid %d) after %d MiB of the layer", a.Pid(), sent>>20)

	// Worker B gets the job once AckWait expires. Meanwhile no partial blob
	// may ever appear under the layer's name.
	path := blobFile(dataDir, d)
	var done syncEvent
	var redelivered time.Duration
	harness.Eventually(t, 110*time.Second, "worker B finishes the job", func() error {
		if fi, err := os.Stat(path); err == nil && fi.Size() != size {
			t.Fatalf("partial blob visible: %s has %d of %d bytes", path, fi.Size(), size)
		}
		if gets, _, last := th.stats(d); gets > 1 && redelivered == 0 {
			redelivered = last.Sub(killed)
		}
		for _, e := range events.All() {
			if e.Seq == ack.Sequence {
				done = e
				return nil
			}
		}
		return fmt.Errorf("no event for seq %d", ack.Sequence)
	})
	total := time.Since(killed)
	t.Logf("after the kill: second download started at %.1fs, job done at %.1fs (deliveries %d)",
		redelivered.Seconds(), total.Seconds(), done.Deliveries)
	if !done.done() || done.BlobsFetched < 1 || done.Bytes < size {
		t.Errorf("sync result: %v; want done with the layer fetched", done)
	}
	if got, err := fileDigest(path); err != nil || got != d {
		t.Errorf("stored layer hashes to %s (%v), want %s", got, err, d)
	}
	verifyStore(t, dataDir)
	if tmp, err := os.ReadDir(filepath.Join(dataDir, "store", "tmp")); err == nil {
		t.Logf("store/tmp holds %d leftover entries (allowed)", len(tmp))
	}
	if gets, _, _ := th.stats(d); gets != 2 {
		t.Errorf("%d GETs of the layer, want 2 (the killed one and the finished one)", gets)
	}
	if exited, _ := b.Exited(); exited {
		t.Error("worker B exited")
	}
	waitWorkDrained(t, js, 10*time.Second)
}

// TestNATSOutageDuringPulls stops NATS while a pull streams through serve:
// that pull and a cold pull of another image keep working straight from
// the upstream. Once NATS is back on the same port and store, a new cold
// pull's miss events flow again and the worker warms its other platform;
// the events buffered during the outage are delivered too.
func TestNATSOutageDuringPulls(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	opts := harness.ImageOptions{LayerSize: 4 << 20}
	var ims []*harness.Image
	for i, repo := range []string{"e2e/during", "e2e/outage", "e2e/after"} {
		opts.Seed = int64(801 + i)
		ims = append(ims, pushNewImage(t, up, repo+":v1", opts))
	}
	during, outage, after := ims[0], ims[1], ims[2]
	th := startThrottle(t, up, 4<<20) // a single-platform pull takes about a second
	cfg := workerConfig(ns.URL(), th.URL)
	rw := harness.StartRegwarm(t, "serve", cfg)
	startWorkers(t, cfg, rw.DataDir, 1)

	pull := func(repo string, im *harness.Image) error {
		out := t.TempDir()
		o, err := harness.TrySkopeo(t, "--override-os", "linux", "--override-arch", "amd64", "copy", "--src-tls-verify=false",
			"docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+out+":v1")
		if err != nil {
			return fmt.Errorf("%v\n%s", err, o)
		}
		if got, want := harness.LayoutTags(t, out)["v1"], im.Platform("linux/amd64").Digest; got != want {
			return fmt.Errorf("copied %s, want the linux/amd64 manifest %s", got, want)
		}
		return nil
	}

	// Stop NATS as soon as the first layer streams.
	errc := make(chan error, 1)
	go func() { errc <- pull("e2e/during", during) }()
	layer := during.Platform("linux/amd64").Layers[1]
	harness.Eventually(t, 30*time.Second, "the pull streams a layer", func() error {
		if gets, _, _ := th.stats(layer); gets == 0 {
			return fmt.Errorf("layer %s not requested yet", layer)
		}
		return nil
	})
	if err := ns.Stop(); err != nil {
		t.Errorf("stop nats-server: %v", err)
	}
	select {
	case err := <-errc:
		t.Fatalf("the pull ended before NATS stopped (%v); slow the throttle down", err)
	default:
	}
	if err := <-errc; err != nil {
		t.Fatalf("pull while NATS stopped: %v", err)
	}
	start := time.Now()
	if err := pull("e2e/outage", outage); err != nil {
		t.Fatalf("cold pull with NATS down: %v", err)
	}
	t.Logf("cold pull with NATS down took %.2fs", time.Since(start).Seconds())
	assertBlobGETs(t, up, "e2e/outage", 1, blobsOf(outage, "linux/amd64")...)
	if m := missingBlobs(rw.DataDir, platformOnly(outage, "linux/arm64")); len(m) == 0 {
		t.Error("with NATS down, the other platform was warmed anyway")
	}

	published := func() float64 {
		return harness.ScrapeMetrics(t, rw.MetricsAddr).Value("regwarm_events_published_total", "result", "ok")
	}
	before := published()
	ns.Start()
	// Serve publishes the misses it buffered during the outage once it has
	// reconnected. Until then its fills run without leases, and a worker
	// may fetch the same blobs again; wait so that the next pull is leased.
	harness.Eventually(t, 30*time.Second, "serve publishes the misses of the outage", func() error {
		if n := published(); n <= before {
			return fmt.Errorf("%v events published, %v before NATS returned", n, before)
		}
		return nil
	})
	if err := pull("e2e/after", after); err != nil {
		t.Fatalf("cold pull after NATS returned: %v", err)
	}
	took := waitBlobs(t, rw.DataDir, 30*time.Second, "the worker warms the other platform after NATS returned",
		blobsOf(after, "linux/amd64", "linux/arm64"))
	t.Logf("other platform warmed %.2fs after the pull", took.Seconds())
	waitBlobs(t, rw.DataDir, 30*time.Second, "the worker warms the other platform of the outage's pull",
		blobsOf(outage, "linux/amd64", "linux/arm64"))
	waitWorkDrained(t, harness.JetStream(t, ns.URL()), 30*time.Second)
	assertBlobGETs(t, up, "e2e/after", 1, blobsOf(after, "linux/amd64", "linux/arm64")...)
	verifyStore(t, rw.DataDir)
}
