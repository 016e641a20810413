package e2e

import (
	"context"
	"github.com/nats-io/nats.go/jetstream"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestForegroundColdPullWarmsEverything pulls one platform of a
// two-platform image with skopeo through `regwarm run` (embedded NATS,
// worker warming every platform): the pull queues exactly one job, every
// blob of both platforms is local within 5 s of the pull ending, and the
// upstream (docker-registry, no referrers API) sees at most one request
// per distinct manifest and blob plus 2 for the whole pull and warming.
// With the upstream stopped, everything is then served locally.
func TestForegroundColdPullWarmsEverything(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/foreground"
	im := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 1601, LayerSize: 1 << 20})
	rw := harness.StartRegwarm(t, "run", hubConfig(up.URL(), 5*time.Minute)+jobsOff)
	natsURL := "nats://" + rw.NATSAddr
	events := watchEvents(t, natsURL)
	js, err := jetstream.New(rw.NATSConn()) // the JetStream API needs regwarm's user on the embedded server
	if err != nil {
		t.Fatal(err)
	}
	before := len(up.Requests())

	out := t.TempDir()
	harness.Skopeo(t, "--override-os", "linux", "--override-arch", "amd64", "copy", "--src-tls-verify=false",
		"docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+out+":v1")
	assertPlatformCopy(t, im, "linux/amd64", out, "v1")
	all := blobsOf(im, "linux/amd64", "linux/arm64")
	took := waitBlobs(t, rw.DataDir, 5*time.Second, "every blob of both platforms local within 5 s of the pull", all)
	t.Logf("both platforms stored %.2fs after the pull ended", took.Seconds())

	events.Wait(t, 20*time.Second, "a sync.done event for the index", func(e syncEvent) bool {
		return e.done() && e.Digest == im.IndexDigest
	})
	waitWorkDrained(t, js, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, workStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != 1 {
		t.Errorf("the pull queued %d jobs, want 1 (the image's); events: %v", info.State.LastSeq, events.All())
	}

	reqs := up.Requests()[before:]
	manifests := 1 + len(im.Manifests)
	if limit := manifests + len(all) + 2; len(reqs) > limit {
		var lines []string
		for _, r := range reqs {
			lines = append(lines, r.Method+" "+r.Path+" "+r.Query)
		}
		t.Errorf("upstream got %d requests for %d manifests and %d blobs, want at most %d:\n%s",
			len(reqs), manifests, len(all), limit, strings.Join(lines, "\n"))
	}
	assertBlobGETs(t, up, repo, 1, all...)

	if err := up.Stop(); err != nil {
		t.Logf("stop docker-registry: %v", err)
	}
	for _, d := range all {
		if code, err := headThrough(rw, "/v2/hub/"+repo+"/blobs/"+d, ""); err != nil || code != http.StatusOK {
			t.Errorf("HEAD blob %s with the upstream down: %d %v, want 200", d, code, err)
		}
	}
	accept := map[string]string{im.IndexDigest: harness.MediaTypeIndex}
	for _, m := range im.Manifests {
		accept[m.Digest] = harness.MediaTypeManifest
	}
	for d, mt := range accept {
		if code, err := headThrough(rw, "/v2/hub/"+repo+"/manifests/"+d, mt); err != nil || code != http.StatusOK {
			t.Errorf("HEAD manifest %s with the upstream down: %d %v, want 200", d, code, err)
		}
	}
}
