package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/e2e/harness"
)

// Names the contract gives the work stream, its consumer and subjects.
const (
	workStream   = "REGWARM_WORK"
	workConsumer = "regwarm-worker"
	syncSubject  = "regwarm.sync"
)

// workerConfig is the config shared by serve and workers: NATS at natsURL
// and one default registry "hub" whose connector "up" (host lab.local)
// is upURL.
func workerConfig(natsURL, upURL string) string {
	return fmt.Sprintf(`version: 1
data_dir: "{{.DataDir}}"
log: {level: debug, format: text}
serve: {listen: "{{.Addr}}"}
metrics: {listen: "{{.MetricsAddr}}"}
nats: {url: %q}
worker: {concurrency: 4, ack_wait: 10s}
registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: 5m}
connectors:
  - {name: up, url: %q, host: lab.local}
`, natsURL, upURL)
}

// startWorkers starts n workers on cfg sharing the store in dataDir.
func startWorkers(t *testing.T, cfg, dataDir string, n int) []*harness.Worker {
	t.Helper()
	var ws []*harness.Worker
	for i := range n {
		ws = append(ws, harness.StartWorker(t, fmt.Sprintf("worker-%d", i+1), cfg, harness.ConfigVars{DataDir: dataDir}))
	}
	return ws
}

// syncEvent is a regwarm.events.sync.done or .failed payload.
type syncEvent struct {
	Subject      string `json:"-"`
	Image        string `json:"image"`
	Digest       string `json:"digest"`
	Manifests    int    `json:"manifests"`
	BlobsFetched int    `json:"blobs_fetched"`
	BlobsPresent int    `json:"blobs_present"`
	Bytes        int64  `json:"bytes"`
	DurationMS   int64  `json:"duration_ms"`
	Error        string `json:"error"`
	Seq          uint64 `json:"seq"`
	RequestID    string `json:"request_id"`
	Deliveries   uint64 `json:"deliveries"` // beyond the contract; logged only
}

func (e syncEvent) done() bool { return strings.HasSuffix(e.Subject, ".done") }

func (e syncEvent) String() string {
	b, _ := json.Marshal(e)
	return e.Subject + " " + string(b)
}

// eventLog collects every sync result event on a NATS server.
type eventLog struct {
	mu     sync.Mutex
	events []syncEvent
	bad    []string
}

// watchEvents subscribes to regwarm.events.sync.> until the test ends; it
// reconnects forever, so it survives a server restart.
func watchEvents(t *testing.T, url string) *eventLog {
	t.Helper()
	nc := natsConn(t, url)
	l := &eventLog{}
	_, err := nc.Subscribe("regwarm.events.sync.>", func(m *nats.Msg) {
		var e syncEvent
		err := json.Unmarshal(m.Data, &e)
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.bad = append(l.bad, fmt.Sprintf("%s: %v: %q", m.Subject, err, m.Data))
			return
		}
		e.Subject = m.Subject
		l.events = append(l.events, e)
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatalf("subscribe to sync events: %v", err)
	}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, b := range l.bad {
			t.Errorf("undecodable sync event %s", b)
		}
	})
	return l
}

func (l *eventLog) all() []syncEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]syncEvent(nil), l.events...)
}

// wait returns the first event that matches, polling up to timeout.
func (l *eventLog) wait(t *testing.T, timeout time.Duration, what string, match func(syncEvent) bool) syncEvent {
	t.Helper()
	var found syncEvent
	harness.Eventually(t, timeout, what, func() error {
		evs := l.all()
		for _, e := range evs {
			if match(e) {
				found = e
				return nil
			}
		}
		return fmt.Errorf("%d events so far: %v", len(evs), evs)
	})
	return found
}

// natsConn connects to url for the test's own use, reconnecting forever.
func natsConn(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// jetStream returns a JetStream client for url.
func jetStream(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(natsConn(t, url))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

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

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
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

// headThrough HEADs path on rw and returns the status.
func headThrough(rw *harness.Regwarm, path string, accept string) (int, error) {
	req, _ := http.NewRequest(http.MethodHead, rw.URL()+path, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
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
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 701, LayerSize: 1 << 20})
	const repo = "e2e/warm"
	pushImage(t, im, up.Addr+"/"+repo+":v1")
	cfg := workerConfig(ns.URL(), up.URL())
	rw := harness.StartRegwarm(t, "serve", cfg)
	startWorkers(t, cfg, rw.DataDir, 2)
	events := watchEvents(t, ns.URL())
	js := jetStream(t, ns.URL())

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

	done := events.wait(t, 20*time.Second, "a sync.done event for the index", func(e syncEvent) bool {
		return e.done() && e.Digest == im.IndexDigest
	})
	if done.Manifests < 3 || done.Seq == 0 || !strings.HasPrefix(done.Image, "hub/"+repo) {
		t.Errorf("index sync: %v; want image hub/%s…, at least 3 manifests and a seq", done, repo)
	}
	waitWorkDrained(t, js, 20*time.Second)
	for _, e := range events.all() {
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
	im1 := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 711})
	im2 := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 712})
	pushImage(t, im1, up.Addr+"/e2e/queued:v1")
	pushImage(t, im2, up.Addr+"/e2e/queued-req:v1")
	cfg := workerConfig(ns.URL(), up.URL())
	rw := harness.StartRegwarm(t, "serve", cfg)
	js := jetStream(t, ns.URL())
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
	if n := len(events.all()); n != 0 {
		t.Errorf("without a worker: %d sync events, want none", n)
	}

	startWorkers(t, cfg, rw.DataDir, 1)
	events.wait(t, 30*time.Second, "sync.done for the published image", func(e syncEvent) bool {
		return e.done() && e.Image == "hub/e2e/queued:v1" && e.Digest == im1.IndexDigest
	})
	byReq := events.wait(t, 30*time.Second, fmt.Sprintf("sync.done with seq %d", seq), func(e syncEvent) bool {
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
