package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/e2e/harness"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/jobs"
)

// This file holds the helpers that several of the e2e test files use.

// requireRegwarm fails a test that checks regwarm-only behaviour when the
// suite runs against the docker-registry stand-in, which has no connectors.
func requireRegwarm(t *testing.T) {
	t.Helper()
	if harness.Target != harness.TargetRegwarm {
		// Not a skip: a run that claims to test regwarm's features must fail
		// when they cannot be tested. Select the core tests with -run.
		t.Fatalf("this test needs regwarm (connectors, NATS, jobs), not the %s stand-in", harness.Target)
	}
}

// Configs.

// coreConfig has a default push registry "local" and a second push
// registry "other", with no connectors.
const coreConfig = harness.ConfigHeader + `registries:
  - {name: local, default: true, push: true}
  - {name: other, push: true}
`

// startCore starts a fresh regwarm serve with coreConfig.
func startCore(t *testing.T) *harness.Regwarm {
	t.Helper()
	return harness.StartRegwarm(t, "serve", coreConfig)
}

// hubRegistries is the registries and connectors part of a config: one
// default registry "hub" whose connector "up" (host lab.local) is the
// registry at upURL.
func hubRegistries(upURL string, ttl time.Duration) string {
	return fmt.Sprintf(`registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: %s}
connectors:
  - {name: up, url: %q, host: lab.local}
`, ttl, upURL)
}

// hubConfig is the hub registry behind ConfigHeader (embedded NATS).
func hubConfig(upURL string, ttl time.Duration) string {
	return harness.ConfigHeader + hubRegistries(upURL, ttl)
}

// workerConfig is the config shared by serve and workers: NATS at natsURL
// and the hub registry (tag_ttl 5m) on upURL.
func workerConfig(natsURL, upURL string) string {
	return natsConfig(fmt.Sprintf("{url: %q}", natsURL), upURL)
}

// natsConfig is workerConfig with the given nats section.
func natsConfig(nats, upURL string) string {
	return `version: 1
data_dir: "{{.DataDir}}"
log: {level: debug, format: text}
serve: {listen: "{{.Addr}}"}
metrics: {listen: "{{.MetricsAddr}}"}
nats: ` + nats + `
worker: {concurrency: 4, ack_wait: 10s}
` + hubRegistries(upURL, 5*time.Minute)
}

// jobsOff disables every scheduled job; tests override one at a time.
const jobsOff = `jobs:
  dangling_scan: {schedule: "", repair: false}
  verify: {schedule: ""}
  refresh: {schedule: ""}
`

// writeFile writes a test input file.
func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Images and registries.

// pushImage copies every platform of im to docker://ref with digests kept.
func pushImage(t *testing.T, im *harness.Image, ref string) {
	t.Helper()
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", im.OCI(), "docker://"+ref)
}

// pushNewImage builds a test image with opts and pushes it to up as ref
// (repo:tag).
func pushNewImage(t *testing.T, up *harness.Upstream, ref string, opts harness.ImageOptions) *harness.Image {
	t.Helper()
	im := harness.BuildImage(t, t.TempDir(), opts)
	pushImage(t, im, up.Addr+"/"+ref)
	return im
}

// hostPlatform is the image platform that pulls on this machine pick.
func hostPlatform() string { return "linux/" + runtime.GOARCH }

// blobsOf returns the config and layer digests of the given platforms.
func blobsOf(im *harness.Image, platforms ...string) []string {
	var out []string
	for _, p := range platforms {
		out = append(out, im.Blobs(p)[1:]...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// assertPlatformCopy fails unless the OCI layout in dir tags tag with the
// manifest of im's platform and holds exactly that manifest, its config
// and its layers, each hashing to its name.
func assertPlatformCopy(t *testing.T, im *harness.Image, platform, dir, tag string) {
	t.Helper()
	m := im.Platform(platform)
	if got := harness.LayoutTags(t, dir)[tag]; got != m.Digest {
		t.Errorf("%s copy: tag -> %s, want %s", platform, got, m.Digest)
	}
	want := slices.Sorted(slices.Values(im.Blobs(platform)))
	if got := harness.LayoutBlobs(t, dir); !slices.Equal(got, want) {
		t.Errorf("%s copy: blobs\n got %v\nwant %v", platform, got, want)
	}
}

// assertBlobGETs fails unless the upstream logged exactly want GETs of each
// blob of repo.
func assertBlobGETs(t *testing.T, up *harness.Upstream, repo string, want int, digests ...string) {
	t.Helper()
	gets := map[string]int{}
	for _, r := range up.Requests() {
		if r.Method == "GET" {
			gets[r.Path]++
		}
	}
	for _, d := range digests {
		if n := gets["/v2/"+repo+"/blobs/"+d]; n != want {
			t.Errorf("upstream: %d GETs of %s blob %s, want %d", n, repo, d, want)
		}
	}
}

// explainFetches logs the upstream's requests for manifest key (a tag or
// digest) and regwarm's debug lines about it, to tell why it was fetched
// more than once.
func explainFetches(t *testing.T, up *harness.Upstream, rw *harness.Regwarm, key string) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(up.Log(), "\n") {
		if strings.HasPrefix(l, "127.") && strings.Contains(l, "/manifests/"+key+" ") {
			lines = append(lines, "upstream: "+l)
		}
	}
	for _, l := range strings.Split(rw.Log(), "\n") {
		if strings.Contains(l, key) && !strings.Contains(l, "msg=request") && !strings.Contains(l, "level=INFO") {
			lines = append(lines, "regwarm: "+l)
		}
	}
	t.Logf("log lines about %s:\n%s", key, strings.Join(lines, "\n"))
}

// cacheCount reads regwarm_cache_requests_total for a registry and labels.
func cacheCount(t *testing.T, rw *harness.Regwarm, registry string, kv ...string) float64 {
	t.Helper()
	return harness.ScrapeMetrics(t, rw.MetricsAddr).Value("regwarm_cache_requests_total", append([]string{"registry", registry}, kv...)...)
}

// dockerInspect returns an image's id and repo digests.
func dockerInspect(t *testing.T, d *harness.Dockerd, ref string) (string, []string) {
	t.Helper()
	var inspect []struct {
		ID          string `json:"Id"`
		RepoDigests []string
	}
	if err := json.Unmarshal([]byte(d.Docker("image", "inspect", ref)), &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("docker image inspect %s: %v (%d images)", ref, err, len(inspect))
	}
	return inspect[0].ID, inspect[0].RepoDigests
}

// podmanInspect returns a podman image's id ("sha256:…") and repo digests.
func podmanInspect(t *testing.T, p *harness.PodmanCLI, ref string) (string, []string) {
	t.Helper()
	var inspect []struct {
		ID          string   `json:"Id"`
		RepoDigests []string `json:"RepoDigests"`
	}
	if err := json.Unmarshal([]byte(p.Run("image", "inspect", ref)), &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("podman image inspect %s: %v (%d images)", ref, err, len(inspect))
	}
	return "sha256:" + inspect[0].ID, inspect[0].RepoDigests
}

// assertContainerdHas fails unless containerd lists im by its index and
// its content store holds every digest of content.
func assertContainerdHas(t *testing.T, c *harness.Containerd, im *harness.Image, content []string) {
	t.Helper()
	if out := c.Ctr("images", "ls"); !strings.Contains(out, im.IndexDigest) {
		t.Errorf("ctr images ls lacks %s:\n%s", im.IndexDigest, out)
	}
	have := strings.Fields(c.Ctr("content", "ls", "--quiet"))
	for _, d := range content {
		if !slices.Contains(have, d) {
			t.Errorf("containerd content store lacks %s", d)
		}
	}
}

// Raw registry requests.

// httpClient is for raw registry requests in tests; no overall timeout, so
// that large blobs can stream.
var httpClient = &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: time.Minute}}

// send sends a request without a body to url with client, with an Accept
// header unless accept is "", and closes the response body: the response
// keeps its status and headers.
func send(client *http.Client, method, url, accept string) (*http.Response, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

// httpStatus sends a request without a body to url and returns the status.
func httpStatus(t *testing.T, method, url string) int {
	t.Helper()
	resp, err := send(httpClient, method, url, "")
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode
}

// manifestDigest asks regwarm for a manifest (accepting an OCI index) and
// returns the status and Docker-Content-Digest.
func manifestDigest(t *testing.T, rw *harness.Regwarm, path string) (int, string) {
	t.Helper()
	resp, err := send(httpClient, http.MethodGet, rw.URL()+path, harness.MediaTypeIndex+", "+harness.MediaTypeManifest)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Docker-Content-Digest")
}

// pushBlobHTTP uploads b into repo on the registry at base ("http://ADDR")
// with one POST and one monolithic PUT, and returns its digest.
func pushBlobHTTP(t *testing.T, base, repo string, b []byte) string {
	t.Helper()
	d := harness.Digest(b)
	location := openUpload(t, base, repo)
	loc, err := url.Parse(base + "/")
	if err == nil {
		loc, err = loc.Parse(location)
	}
	if err != nil {
		t.Fatalf("upload Location %q: %v", location, err)
	}
	q := loc.Query()
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := httpClient.Do(req)
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

// getBlobHTTP reads a whole blob with client and returns its digest and
// length.
func getBlobHTTP(client *http.Client, base, repo, d string) (string, int64, error) {
	resp, err := client.Get(base + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("GET blob %s: status %d", d, resp.StatusCode)
	}
	got, n, err := harness.DigestOf(resp.Body)
	if err != nil {
		return "", n, fmt.Errorf("GET blob %s: after %d bytes: %w", d, n, err)
	}
	return got, n, nil
}

// Proxies in front of an upstream.

// startBlobProxy starts a reverse proxy to up, closed by t.Cleanup, and
// returns its URL. Every successful blob GET passes its response to wrap
// with the blob's digest; wrap may replace the body. errorLog, when not
// nil, receives the proxy's errors instead of the standard logger.
func startBlobProxy(t *testing.T, up *harness.Upstream, errorLog *log.Logger, wrap func(resp *http.Response, digest string)) string {
	t.Helper()
	target, _ := url.Parse(up.URL())
	proxy := &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.Out.Host = pr.In.Host },
		FlushInterval: -1,
		ErrorLog:      errorLog,
		ModifyResponse: func(resp *http.Response) error {
			_, d, ok := strings.Cut(resp.Request.URL.Path, "/blobs/")
			if ok && resp.Request.Method == http.MethodGet && resp.StatusCode == http.StatusOK {
				wrap(resp, d)
			}
			return nil
		},
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	return srv.URL
}

// throttle is a reverse proxy in front of an upstream that sends blob
// bodies at rate bytes per second and counts, per digest, the blob GETs
// started and the body bytes passed on.
type throttle struct {
	URL  string
	rate int64

	mu    sync.Mutex
	gets  map[string]int
	sent  map[string]int64
	first map[string]time.Time // when the last GET of a digest started
}

// startThrottle proxies to up; it is closed by t.Cleanup.
func startThrottle(t *testing.T, up *harness.Upstream, rate int64) *throttle {
	t.Helper()
	th := &throttle{rate: rate, gets: map[string]int{}, sent: map[string]int64{}, first: map[string]time.Time{}}
	quiet := log.New(io.Discard, "", 0) // a killed client is expected
	th.URL = startBlobProxy(t, up, quiet, func(resp *http.Response, d string) {
		th.mu.Lock()
		th.gets[d]++
		th.first[d] = time.Now()
		th.mu.Unlock()
		resp.Body = &slowBody{ReadCloser: resp.Body, th: th, d: d, start: time.Now()}
	})
	return th
}

// stats returns the GETs started, bytes sent and start of the last GET of d.
func (th *throttle) stats(d string) (gets int, sent int64, last time.Time) {
	th.mu.Lock()
	defer th.mu.Unlock()
	return th.gets[d], th.sent[d], th.first[d]
}

// slowBody passes a body on at the throttle's rate.
type slowBody struct {
	io.ReadCloser
	th    *throttle
	d     string
	start time.Time
	n     int64
}

func (b *slowBody) Read(p []byte) (int, error) {
	if chunk := b.th.rate / 100; int64(len(p)) > chunk {
		p = p[:chunk]
	}
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	b.th.mu.Lock()
	b.th.sent[b.d] += int64(n)
	b.th.mu.Unlock()
	if ahead := time.Duration(b.n*int64(time.Second)/b.th.rate) - time.Since(b.start); ahead > 0 {
		time.Sleep(ahead)
	}
	return n, err
}

// regwarm's filesystem store (internal/store/fs.go).

// blobFile is where the filesystem store under dataDir keeps a blob.
func blobFile(dataDir, d string) string {
	alg, hx, _ := strings.Cut(d, ":")
	return filepath.Join(dataDir, "store", "blobs", alg, hx[:2], hx)
}

// missingBlobs returns the digests that have no blob file under dataDir.
func missingBlobs(dataDir string, digests []string) []string {
	var out []string
	for _, d := range digests {
		if _, err := os.Stat(blobFile(dataDir, d)); err != nil {
			out = append(out, d)
		}
	}
	return out
}

// waitWritten waits until regwarm has written to its store everything it
// answered to clients from memory (write-behind: at most about a second
// after the last pull) and returns how long that took.
func waitWritten(t *testing.T, rw *harness.Regwarm) time.Duration {
	t.Helper()
	start := time.Now()
	harness.Eventually(t, 10*time.Second, "regwarm_cache_pending_writes 0", func() error {
		if n := harness.ScrapeMetrics(t, rw.MetricsAddr).Value("regwarm_cache_pending_writes"); n != 0 {
			return fmt.Errorf("%v pending writes", n)
		}
		return nil
	})
	return time.Since(start)
}

// waitBlobs waits until every digest has a blob file under dataDir and
// returns how long that took.
func waitBlobs(t *testing.T, dataDir string, timeout time.Duration, what string, digests []string) time.Duration {
	t.Helper()
	start := time.Now()
	harness.Eventually(t, timeout, what, func() error {
		if m := missingBlobs(dataDir, digests); len(m) > 0 {
			return fmt.Errorf("%d of %d blobs missing: %v", len(m), len(digests), m)
		}
		return nil
	})
	return time.Since(start)
}

// verifyStore re-hashes every blob file under dataDir: each must hash to
// its name. It returns the number of blobs.
func verifyStore(t *testing.T, dataDir string) int {
	t.Helper()
	root := filepath.Join(dataDir, "store", "blobs")
	n := 0
	err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		parts := strings.Split(rel, string(filepath.Separator))
		if len(parts) != 3 || parts[0] != "sha256" || !strings.HasPrefix(parts[2], parts[1]) {
			t.Errorf("store: unexpected file blobs/%s", rel)
			return nil
		}
		got, err := fileDigest(path)
		if err != nil {
			return err
		}
		if want := "sha256:" + parts[2]; got != want {
			t.Errorf("store: blob %s holds content hashing to %s", want, got)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatalf("store: %v", err)
	}
	return n
}

// fileDigest returns the sha256 digest of a file's content.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d, _, err := harness.DigestOf(f)
	if err != nil {
		return "", err
	}
	return d, nil
}

// The NATS contract: work stream, sync requests and result events.

// Names the contract gives the work stream, its consumer and subjects.
const (
	workStream    = "REGWARM_WORK"
	workConsumer  = "regwarm-worker"
	syncSubject   = "regwarm.sync"
	reportSubject = "regwarm.events.report" // summaries of finished job runs
)

// startWorkers starts n workers on cfg sharing the store in dataDir.
func startWorkers(t *testing.T, cfg, dataDir string, n int) []*harness.Worker {
	t.Helper()
	var ws []*harness.Worker
	for i := range n {
		ws = append(ws, harness.StartWorker(t, fmt.Sprintf("worker-%d", i+1), cfg, harness.ConfigVars{DataDir: dataDir}))
	}
	return ws
}

// syncEvent is a regwarm.events.sync.done or .failed payload with the
// subject it came on.
type syncEvent struct {
	Subject string `json:"-"`
	events.SyncResult
}

func (e syncEvent) done() bool { return strings.HasSuffix(e.Subject, ".done") }

func (e syncEvent) String() string {
	b, _ := json.Marshal(e)
	return e.Subject + " " + string(b)
}

// setSubject completes a syncEvent from its message.
func setSubject(m *nats.Msg, e *syncEvent) { e.Subject = m.Subject }

// watchEvents collects every sync result event on the NATS server at url
// (regwarm.events.sync.>) until the test ends; its connection reconnects
// forever, so it survives a server restart.
func watchEvents(t *testing.T, url string) *harness.MsgLog[syncEvent] {
	t.Helper()
	nc := harness.NATSConn(t, url)
	l := harness.NewMsgLog(t, "sync event", setSubject)
	l.Subscribe(t, nc, "regwarm.events.sync.>")
	return l
}

// watchReports collects every event on regwarm.events.report until the
// test ends.
func watchReports(t *testing.T, nc *nats.Conn) *harness.MsgLog[daemon.ReportEvent] {
	t.Helper()
	l := harness.NewMsgLog[daemon.ReportEvent](t, "report event", nil)
	l.Subscribe(t, nc, reportSubject)
	return l
}

// reportOK reports whether the job run of a report event ran and
// succeeded.
func reportOK(e daemon.ReportEvent) bool { return e.Error == "" && !e.Skipped }

// workState returns the work stream's message count and the workers'
// consumer's pending plus unacknowledged messages.
func workState(js jetstream.JetStream) (msgs, pending uint64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, workStream)
	if err != nil {
		return 0, 0, err
	}
	si, err := s.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	c, err := s.Consumer(ctx, workConsumer)
	if err != nil {
		return si.State.Msgs, 0, err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return si.State.Msgs, 0, err
	}
	return si.State.Msgs, ci.NumPending + uint64(ci.NumAckPending), nil
}

// workDrained returns nil once every queued job was acknowledged (or
// terminated): a work-queue stream then holds no message.
func workDrained(js jetstream.JetStream) func() error {
	return func() error {
		msgs, pending, err := workState(js)
		if err != nil {
			return err
		}
		if msgs != 0 || pending != 0 {
			return fmt.Errorf("%d messages in %s, %d pending or unacknowledged", msgs, workStream, pending)
		}
		return nil
	}
}

// waitWorkDrained waits until every queued job was acknowledged.
func waitWorkDrained(t *testing.T, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	harness.Eventually(t, timeout, "the work queue drains", workDrained(js))
}

// natsCLI runs natscli against url, with stdin when it is not nil, in
// the test's private HOME, and returns its combined output and error.
func natsCLI(t *testing.T, url string, stdin []byte, args ...string) (string, error) {
	t.Helper()
	bin, err := exec.LookPath("nats")
	if err != nil {
		t.Fatal("nats (natscli) not found on PATH (install it; see .ci/run)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args = append([]string{"--server", url}, args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), harness.ClientEnv(t)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("$ nats %s  (%.2fs)", strings.Join(args, " "), time.Since(start).Seconds())
	return string(out), err
}

// jsAck matches JetStream's publish acknowledgement.
var jsAck = regexp.MustCompile(`\{"stream":"([^"]+)",\s*"seq":(\d+)`)

// natsRequestSync sends body to regwarm.sync with `nats request` and
// returns the stream sequence from JetStream's acknowledgement.
func natsRequestSync(t *testing.T, url string, body []byte, stdin bool) uint64 {
	t.Helper()
	var out string
	var err error
	if stdin {
		out, err = natsCLI(t, url, body, "request", "--raw", "--force-stdin", syncSubject)
	} else {
		out, err = natsCLI(t, url, nil, "request", "--raw", syncSubject, string(body))
	}
	if err != nil {
		t.Fatalf("nats request: %v\n%s", err, out)
	}
	m := jsAck.FindStringSubmatch(out)
	if m == nil || m[1] != workStream {
		t.Fatalf("nats request %s: no JetStream ack from %s in %q", syncSubject, workStream, out)
	}
	seq, _ := strconv.ParseUint(m[2], 10, 64)
	return seq
}

// Job reports and the one-shot regwarm commands.

// decodeReport parses a report and checks the parts of its shape that the
// contract promises: version 1, the always-present summary fields, and a
// problems array that is never null.
func decodeReport(t *testing.T, what string, b []byte) jobs.Report {
	t.Helper()
	var raw struct {
		Summary  map[string]json.RawMessage `json:"summary"`
		Problems json.RawMessage            `json:"problems"`
	}
	var rep jobs.Report
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", what, err, b)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("%s: not a report: %v\n%s", what, err, b)
	}
	for _, k := range []string{"registries", "manifests", "references", "local", "remote_only", "problems", "by_registry"} {
		if _, ok := raw.Summary[k]; !ok {
			t.Errorf("%s: summary.%s is missing (always present per docs/reports.md)", what, k)
		}
	}
	if string(raw.Problems) == "null" || raw.Problems == nil {
		t.Errorf("%s: problems is %s, want an array", what, raw.Problems)
	}
	if rep.Version != 1 {
		t.Errorf("%s: version %d, want 1", what, rep.Version)
	}
	if rep.Started.IsZero() || rep.Finished.Before(rep.Started) {
		t.Errorf("%s: started %s, finished %s", what, rep.Started, rep.Finished)
	}
	return rep
}

// readReport reads and decodes a report file.
func readReport(t *testing.T, path string) (jobs.Report, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	return decodeReport(t, path, b), b
}

// cliResult is the outcome of a one-shot regwarm command.
type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
}

// runRegwarmCLI runs the regwarm binary to completion with separate
// stdout and stderr and returns its exit code.
func runRegwarmCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	r := runRegwarmFor(t, 2*time.Minute, args...)
	if r.code == timedOut {
		t.Fatalf("regwarm %s: still running after 2m", strings.Join(args, " "))
	}
	return r
}

// timedOut is the cliResult code of a command that runRegwarmFor killed.
const timedOut = -1

// runRegwarmFor runs the regwarm binary for at most timeout; a command
// still running then is killed and its code is timedOut.
func runRegwarmFor(t *testing.T, timeout time.Duration, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.RegwarmBinary(t), args...)
	cmd.Env = append(os.Environ(), harness.ClientEnv(t)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("$ regwarm %s  (%.2fs)", strings.Join(args, " "), time.Since(start).Seconds())
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	case ctx.Err() != nil:
		r.code = timedOut
	default:
		t.Fatalf("regwarm %s: %v\nstderr:\n%s", strings.Join(args, " "), err, r.stderr)
	}
	return r
}

// wantCode fails the test unless the command exited with code.
func (r cliResult) wantCode(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("regwarm %s: exit %d, want %d\nstdout:\n%s\nstderr (tail):\n%s",
			strings.Join(r.args, " "), r.code, code, r.stdout, harness.LastLines(r.stderr, 30))
	}
}
