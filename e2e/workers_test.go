package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// headThrough HEADs path on rw and returns the status.
func headThrough(rw *harness.Regwarm, path string, accept string) (int, error) {
	resp, err := send(httpClient, http.MethodHead, rw.URL()+path, accept)
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// TestWorkersWarmOtherPlatforms pulls one platform of a two-platform image
// through serve while two workers share its store: the miss events make
// the workers fetch the other platform within seconds, and, thanks to
// the fetch leases, the upstream sees every blob GET exactly once across
// the three processes. With the upstream stopped, serve then answers for
// every blob and manifest of both platforms.
func TestWorkersWarmOtherPlatforms(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/warm"
	im := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 701, LayerSize: 1 << 20})
	cfg := workerConfig(ns.URL(), up.URL())
	rw := harness.StartRegwarm(t, "serve", cfg)
	startWorkers(t, cfg, rw.DataDir, 2)
	events := watchEvents(t, ns.URL())
	js := harness.JetStream(t, ns.URL())

	start := time.Now()
	out := t.TempDir()
	harness.Skopeo(t, "--override-os", "linux", "--override-arch", "amd64", "copy", "--src-tls-verify=false",
		"docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+out+":v1")
	if got, want := harness.LayoutTags(t, out)["v1"], im.Platform("linux/amd64").Digest; got != want {
		t.Fatalf("skopeo copied %s, want only the linux/amd64 manifest %s", got, want)
	}
	all := blobsOf(im, "linux/amd64", "linux/arm64")
	took := waitBlobs(t, rw.DataDir, 20*time.Second, "every blob of both platforms in the store", all)
	t.Logf("both platforms stored %.2fs after the pull started (%.2fs after it ended)",
		time.Since(start).Seconds(), took.Seconds())

	done := events.Wait(t, 20*time.Second, "a sync.done event for the index", func(e syncEvent) bool {
		return e.done() && e.Digest == im.IndexDigest
	})
	if done.Manifests < 3 || done.Seq == 0 || !strings.HasPrefix(done.Image, "hub/"+repo) {
		t.Errorf("index sync: %v; want image hub/%s…, at least 3 manifests and a seq", done, repo)
	}
	waitWorkDrained(t, js, 20*time.Second)
	for _, e := range events.All() {
		if !e.done() {
			t.Errorf("unexpected failure event: %v", e)
		}
	}
	assertBlobGETs(t, up, repo, 1, all...)
	if n := verifyStore(t, rw.DataDir); n < len(all) {
		t.Errorf("store holds %d blobs, want at least %d", n, len(all))
	}

	// Everything is local now: serve answers without the upstream.
	if err := up.Stop(); err != nil {
		t.Logf("stop docker-registry: %v", err)
	}
	for _, d := range all {
		if code, err := headThrough(rw, "/v2/hub/"+repo+"/blobs/"+d, ""); err != nil || code != http.StatusOK {
			t.Errorf("HEAD blob %s with the upstream down: %d %v, want 200", d, code, err)
		}
	}
	for _, m := range im.Manifests {
		if code, err := headThrough(rw, "/v2/hub/"+repo+"/manifests/"+m.Digest, harness.MediaTypeManifest); err != nil || code != http.StatusOK {
			t.Errorf("HEAD %s manifest %s with the upstream down: %d %v, want 200", m.Platform, m.Digest, code, err)
		}
	}
}

// TestWorkerSyncQueuedWithoutWorker queues syncs with natscli while no
// worker runs (serve created the stream): `nats pub` stores the job,
// `nats request` is answered by JetStream's ack with a sequence. A worker
// started later syncs both images, and the done events carry the
// sequence; the stream is empty afterwards.
func TestWorkerSyncQueuedWithoutWorker(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	im1 := pushNewImage(t, up, "e2e/queued:v1", harness.ImageOptions{Seed: 711})
	im2 := pushNewImage(t, up, "e2e/queued-req:v1", harness.ImageOptions{Seed: 712})
	cfg := workerConfig(ns.URL(), up.URL())
	rw := harness.StartRegwarm(t, "serve", cfg)
	js := harness.JetStream(t, ns.URL())
	harness.Eventually(t, 20*time.Second, "serve creates the work stream", func() error {
		_, _, err := workState(js)
		return err
	})
	events := watchEvents(t, ns.URL())

	if out, err := natsCLI(t, ns.URL(), nil, "publish", syncSubject, "hub/e2e/queued:v1"); err != nil {
		t.Fatalf("nats publish: %v\n%s", err, out)
	}
	seq := natsRequestSync(t, ns.URL(), []byte("lab.local/e2e/queued-req:v1"), false)
	t.Logf("nats request: queued as seq %d", seq)

	// Nobody consumes yet: both jobs wait in the stream.
	time.Sleep(time.Second)
	if msgs, _, err := workState(js); err != nil || msgs != 2 {
		t.Errorf("without a worker: %d messages in %s (%v), want 2", msgs, workStream, err)
	}
	if n := len(events.All()); n != 0 {
		t.Errorf("without a worker: %d sync events, want none", n)
	}

	startWorkers(t, cfg, rw.DataDir, 1)
	events.Wait(t, 30*time.Second, "sync.done for the published image", func(e syncEvent) bool {
		return e.done() && e.Image == "hub/e2e/queued:v1" && e.Digest == im1.IndexDigest
	})
	byReq := events.Wait(t, 30*time.Second, fmt.Sprintf("sync.done with seq %d", seq), func(e syncEvent) bool {
		return e.Seq == seq
	})
	if !byReq.done() || byReq.Digest != im2.IndexDigest || byReq.Manifests < 3 || byReq.BlobsFetched == 0 {
		t.Errorf("requested sync: %v; want done, digest %s, 3 manifests, blobs fetched", byReq, im2.IndexDigest)
	}
	if missing := missingBlobs(rw.DataDir, append(blobsOf(im1, "linux/amd64", "linux/arm64"), blobsOf(im2, "linux/amd64", "linux/arm64")...)); len(missing) > 0 {
		t.Errorf("after both jobs: blobs missing from the store: %v", missing)
	}
	waitWorkDrained(t, js, 10*time.Second)
	verifyStore(t, rw.DataDir)
}
