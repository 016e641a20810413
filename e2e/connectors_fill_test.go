package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// randomBytes returns n incompressible bytes from seed.
func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// httpClient is for raw registry requests in tests; no overall timeout, so
// that large blobs can stream.
var httpClient = &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: time.Minute}}

// pushBlobHTTP uploads b into repo on the registry at base ("http://ADDR")
// with one POST and one monolithic PUT, and returns its digest.
func pushBlobHTTP(t *testing.T, base, repo string, b []byte) string {
	t.Helper()
	d := harness.Digest(b)
	resp, err := httpClient.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload to %s: status %d", repo, resp.StatusCode)
	}
	loc, err := url.Parse(base + "/")
	if err == nil {
		loc, err = loc.Parse(resp.Header.Get("Location"))
	}
	if err != nil {
		t.Fatalf("upload Location %q: %v", resp.Header.Get("Location"), err)
	}
	q := loc.Query()
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT blob %s to %s: status %d", d, repo, resp.StatusCode)
	}
	return d
}

// pushManifestHTTP puts an OCI manifest with one layer (and a small config)
// under repo:tag and returns the manifest digest.
func pushManifestHTTP(t *testing.T, base, repo, tag, layer string, layerSize int64) string {
	t.Helper()
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgDigest := pushBlobHTTP(t, base, repo, cfg)
	m, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     harness.MediaTypeManifest,
		"config":        map[string]any{"mediaType": harness.MediaTypeConfig, "digest": cfgDigest, "size": len(cfg)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layerSize}},
	})
	if err != nil {
		t.Fatal(err)
	}
	putManifestHTTP(t, base, repo, tag, harness.MediaTypeManifest, m)
	return harness.Digest(m)
}

// putManifestHTTP puts manifest bytes under repo:ref.
func putManifestHTTP(t *testing.T, base, repo, ref, mediaType string, m []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(m))
	req.Header.Set("Content-Type", mediaType)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s:%s: status %d", repo, ref, resp.StatusCode)
	}
}

// getBlobHTTP reads a whole blob and returns its digest and length.
func getBlobHTTP(base, repo, d string) (string, int64, error) {
	resp, err := httpClient.Get(base + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("GET blob %s: status %d", d, resp.StatusCode)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return "", n, fmt.Errorf("GET blob %s: after %d bytes: %w", d, n, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

// storedBlobPath is where regwarm's filesystem store keeps a blob.
func storedBlobPath(rw *harness.Regwarm, d string) string {
	hx := strings.TrimPrefix(d, "sha256:")
	return filepath.Join(rw.DataDir, "store", "blobs", "sha256", hx[:2], hx)
}

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
	target, _ := url.Parse(up.URL())
	g := &blobGate{held: make(chan struct{}), release: make(chan struct{})}
	proxy := &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.Out.Host = pr.In.Host },
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			if resp.Request.Method == http.MethodGet && resp.StatusCode == http.StatusOK &&
				strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+d) {
				resp.Body = &gatedBody{ReadCloser: resp.Body, left: pause, g: g}
			}
			return nil
		},
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	t.Cleanup(g.Release) // before srv.Close: a held body would block it
	g.URL = srv.URL
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
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 201, LayerSize: 1 << 20})
	const repo = "e2e/storm"
	pushImage(t, im, up.Addr+"/"+repo+":v1")
	big := randomBytes(202, 16<<20)
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
			got, n, err := getBlobHTTP(rw.URL(), "hub/"+repo, bigDigest)
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
	layer := randomBytes(501, size)
	d := pushBlobHTTP(t, up.URL(), repo, layer)
	md := pushManifestHTTP(t, up.URL(), repo, "v1", d, size)
	gate := startBlobGate(t, up, d, 60<<20)
	rw := harness.StartRegwarm(t, "serve", hubConfig(gate.URL, 5*time.Minute))

	// The manifest first, as a client would.
	req, _ := http.NewRequest(http.MethodGet, rw.URL()+"/v2/hub/"+repo+"/manifests/v1", nil)
	req.Header.Set("Accept", harness.MediaTypeManifest)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
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
	if err := pollUntil(10*time.Second, func() error {
		if n := inflight(); n != 0 {
			return fmt.Errorf("%v requests in flight", n)
		}
		return nil
	}); err != nil {
		t.Errorf("regwarm kept serving a client that hung up: %v", err)
	}
	path := storedBlobPath(rw, d)
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
	got, n, err := getBlobHTTP(rw.URL(), "hub/"+repo, d)
	if err != nil || got != d || n != size {
		t.Fatalf("second GET: %d bytes hashing to %s (%v), want %d bytes of %s", n, got, err, size, d)
	}
	if h := cacheCount(t, rw, "hub", "kind", "blob", "result", "hit") - hits; h != 1 {
		t.Errorf("second GET counted %v blob hits, want 1", h)
	}
	assertBlobGETs(t, up, repo, 1, d)
}

// pollUntil calls cond every 50ms until it returns nil or timeout passes.
func pollUntil(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
