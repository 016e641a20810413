package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// blobGate is a reverse proxy in front of an upstream that stops the body
// of one blob after pause bytes until Release: it holds a fill in flight.
type blobGate struct {
	URL      string
	held     chan struct{} // closed when a body reached pause
	release  chan struct{}
	heldOnce sync.Once
	relOnce  sync.Once
}

// startBlobGate proxies to up, holding blob d after pause bytes.
func startBlobGate(t *testing.T, up *harness.Upstream, d string, pause int64) *blobGate {
	t.Helper()
	g := &blobGate{held: make(chan struct{}), release: make(chan struct{})}
	g.URL = startBlobProxy(t, up, nil, func(resp *http.Response, digest string) {
		if digest == d {
			resp.Body = &gatedBody{ReadCloser: resp.Body, left: pause, g: g}
		}
	})
	t.Cleanup(g.Release) // before the proxy's Close: a held body would block it
	return g
}

// Release lets held bodies continue.
func (g *blobGate) Release() { g.relOnce.Do(func() { close(g.release) }) }

// gatedBody passes left bytes, then waits for the gate's release.
type gatedBody struct {
	io.ReadCloser
	left int64
	g    *blobGate
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		b.g.heldOnce.Do(func() { close(b.g.held) })
		<-b.g.release
		return b.ReadCloser.Read(p)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// waitClosed waits up to timeout for ch to be closed.
func waitClosed(t *testing.T, ch <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(timeout):
		t.Fatalf("%s: not within %s", what, timeout)
	}
}

// TestCacheConcurrentColdPulls starts 20 skopeo copies of one cold image
// at once, then 20 goroutines reading one cold 16 MiB blob while its fill
// is held halfway: the upstream must see each blob GET exactly once and
// each manifest at most once, and every client must get identical bytes.
func TestCacheConcurrentColdPulls(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	const clients = 20
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/storm"
	im := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 201, LayerSize: 1 << 20})
	big := harness.RandomBytes(202, 16<<20)
	bigDigest := pushBlobHTTP(t, up.URL(), repo, big)
	gate := startBlobGate(t, up, bigDigest, 8<<20)
	rw := harness.StartRegwarm(t, "serve", hubConfig(gate.URL, 5*time.Minute))

	start := time.Now()
	dirs := make([]string, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		dirs[i] = filepath.Join(t.TempDir(), "out")
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := harness.TrySkopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
				"docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+dirs[i]+":v1")
			if err != nil {
				errs[i] = fmt.Errorf("%v\n%s", err, out)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent skopeo copies in %.2fs", clients, time.Since(start).Seconds())
	for i, dir := range dirs {
		if errs[i] != nil {
			t.Errorf("copy %d: %v", i, errs[i])
			continue
		}
		harness.AssertSameLayout(t, im, dir)
	}
	assertBlobGETs(t, up, repo, 1, blobsOf(im, "linux/amd64", "linux/arm64")...)
	manifests := []string{"v1", im.IndexDigest}
	for _, m := range im.Manifests {
		manifests = append(manifests, m.Digest)
	}
	for _, ref := range manifests {
		if n := up.CountRequests("GET", "/v2/"+repo+"/manifests/"+ref); n > 1 {
			t.Errorf("upstream: %d GETs of manifest %s, want at most 1", n, ref)
			explainFetches(t, up, rw, ref)
		}
	}

	// Raw readers of one big blob, all arriving while its fill is held.
	coalesced := func() float64 {
		return harness.ScrapeMetrics(t, rw.MetricsAddr).Value("regwarm_coalesced_requests_total")
	}
	base := coalesced()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, n, err := getBlobHTTP(httpClient, rw.URL(), "hub/"+repo, bigDigest)
			if err == nil && (got != bigDigest || n != int64(len(big))) {
				err = fmt.Errorf("got %d bytes hashing to %s", n, got)
			}
			errs[i] = err
		}()
	}
	waitClosed(t, gate.held, 30*time.Second, "the big blob's fill reaches the gate")
	harness.Eventually(t, 30*time.Second, "every reader joins the fill in flight", func() error {
		if n := coalesced() - base; n < clients-1 {
			return fmt.Errorf("%v coalesced", n)
		}
		return nil
	})
	gate.Release()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("reader %d: %v", i, err)
		}
	}
	assertBlobGETs(t, up, repo, 1, bigDigest)
	if n := coalesced() - base; n != clients-1 {
		t.Errorf("regwarm_coalesced_requests_total moved by %v, want %d", n, clients-1)
	}
}

// TestCacheClientDisconnectMidBlob reads half of a cold 100 MiB blob and
// hangs up while the upstream transfer is held: the fill goes on, the store
// gets the whole verified blob, and the next read is served locally
// without a second upstream GET.
func TestCacheClientDisconnectMidBlob(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	const size = 100 << 20
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/big"
	layer := harness.RandomBytes(501, size)
	d := pushBlobHTTP(t, up.URL(), repo, layer)
	md := pushManifestHTTP(t, up.URL(), repo, "v1", d, size)
	gate := startBlobGate(t, up, d, 60<<20)
	rw := harness.StartRegwarm(t, "serve", hubConfig(gate.URL, 5*time.Minute))

	// The manifest first, as a client would.
	resp, err := send(httpClient, http.MethodGet, rw.URL()+"/v2/hub/"+repo+"/manifests/v1", harness.MediaTypeManifest)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != md {
		t.Fatalf("GET manifest: status %d digest %q, want 200 %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), md)
	}

	resp, err = httpClient.Get(rw.URL() + "/v2/hub/" + repo + "/blobs/" + d)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("GET blob: status %d", resp.StatusCode)
	}
	if resp.ContentLength != size {
		t.Errorf("GET blob: Content-Length %d, want %d", resp.ContentLength, size)
	}
	half := make([]byte, size/2)
	if _, err := io.ReadFull(resp.Body, half); err != nil {
		t.Fatalf("reading the first half: %v", err)
	}
	if !bytes.Equal(half, layer[:size/2]) {
		t.Error("the first half differs from the upstream's bytes")
	}
	waitClosed(t, gate.held, 30*time.Second, "the fill reaches the gate")
	resp.Body.Close() // hang up halfway, while the fill is held

	// regwarm notices the hang-up and ends the request; the fill stays.
	inflight := func() float64 {
		return harness.ScrapeMetrics(t, rw.MetricsAddr).Value("regwarm_http_inflight_requests")
	}
	if err := harness.Poll(10*time.Second, func() error {
		if n := inflight(); n != 0 {
			return fmt.Errorf("%v requests in flight", n)
		}
		return nil
	}); err != nil {
		t.Errorf("regwarm kept serving a client that hung up: %v", err)
	}
	path := blobFile(rw.DataDir, d)
	if _, err := os.Stat(path); err == nil {
		t.Fatal("the blob is stored before the upstream transfer finished")
	}
	gate.Release()

	harness.Eventually(t, time.Minute, "the blob lands in the store", func() error {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if fi.Size() != size {
			return fmt.Errorf("%s has %d bytes", path, fi.Size())
		}
		return nil
	})
	stored, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, layer) {
		t.Fatalf("stored blob differs from the upstream's (digest %s)", harness.Digest(stored))
	}

	hits := cacheCount(t, rw, "hub", "kind", "blob", "result", "hit")
	got, n, err := getBlobHTTP(httpClient, rw.URL(), "hub/"+repo, d)
	if err != nil || got != d || n != size {
		t.Fatalf("second GET: %d bytes hashing to %s (%v), want %d bytes of %s", n, got, err, size, d)
	}
	if h := cacheCount(t, rw, "hub", "kind", "blob", "result", "hit") - hits; h != 1 {
		t.Errorf("second GET counted %v blob hits, want 1", h)
	}
	assertBlobGETs(t, up, repo, 1, d)
}
