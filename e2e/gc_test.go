package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regwarm/regwarm/e2e/harness"
)

// gcReport is the gc report of CONTRACT.md ("Reports").
type gcReport struct {
	Version int    `json:"version"`
	Job     string `json:"job"`
	DryRun  bool   `json:"dry_run"`
	Summary struct {
		TagsRemoved      int   `json:"tags_removed"`
		ManifestsRemoved int   `json:"manifests_removed"`
		BlobsRemoved     int   `json:"blobs_removed"`
		BytesFreed       int64 `json:"bytes_freed"`
		ByRegistry       map[string]struct {
			BytesBefore int64 `json:"bytes_before"`
			BytesAfter  int64 `json:"bytes_after"`
		} `json:"by_registry"`
		Recovered int `json:"recovered"`
	} `json:"summary"`
	Removed []struct {
		Registry   string `json:"registry"`
		Repository string `json:"repository"`
		Tag        string `json:"tag"`
		Manifest   string `json:"manifest"`
		Blob       string `json:"blob"`
		Reason     string `json:"reason"`
		LastPulled string `json:"last_pulled"`
		Bytes      int64  `json:"bytes"`
	} `json:"removed"`
}

// runGC runs `regwarm gc --format json` and decodes its report.
func runGC(t *testing.T, cfgPath string, args ...string) gcReport {
	t.Helper()
	res := runRegwarmCLI(t, append([]string{"gc", "--config", cfgPath, "--format", "json"}, args...)...)
	res.wantCode(t, 0)
	t.Logf("gc report:\n%s", res.stdout)
	var rep gcReport
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("gc report: %v in %q", err, res.stdout)
	}
	if rep.Version != 1 || rep.Job != "gc" {
		t.Fatalf("gc report: version %d job %q", rep.Version, rep.Job)
	}
	return rep
}

// imageDigests lists an image's index, manifests, configs and layers.
func imageDigests(im *harness.Image) []string {
	out := []string{im.IndexDigest}
	for _, m := range im.Manifests {
		out = append(out, m.Digest, m.Config)
		out = append(out, m.Layers...)
	}
	return out
}

// storedBytes sums the stored size of distinct digests.
func storedBytes(t *testing.T, dataDir string, digests ...string) int64 {
	t.Helper()
	seen := map[string]bool{}
	var n int64
	for _, d := range digests {
		if seen[d] {
			continue
		}
		seen[d] = true
		fi, err := os.Stat(blobFile(dataDir, d))
		if err != nil {
			t.Fatalf("stored size of %s: %v", d, err)
		}
		n += fi.Size()
	}
	return n
}

// skopeoPull copies every platform of ref from regwarm into a new layout
// below dir.
func skopeoPull(dir, ref string) error {
	out := filepath.Join(dir, fmt.Sprintf("pull-%d", pullSeq.Add(1)))
	_, err := harness.Run(context.Background(), nil, "skopeo", "copy", "--all", "--src-tls-verify=false", "docker://"+ref, "oci:"+out+":x")
	if err == nil {
		err = os.RemoveAll(out)
	}
	return err
}

var pullSeq atomic.Int64

// TestGCOverBudget fills a cache registry over its max_bytes with skopeo
// pulls through a real docker-registry, pulls two images again, and runs
// `regwarm gc` beside the running `regwarm run`: the registry ends under
// its budget, the two recent images are still pulled locally with the
// upstream stopped, the older ones were removed as over-budget, and a kept
// image and a pushed one survive though older.
func TestGCOverBudget(t *testing.T) {
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	opts := func(seed int64) harness.ImageOptions {
		return harness.ImageOptions{Seed: seed, Platforms: []string{hostPlatform()}, Layers: 1, LayerSize: 200 << 10}
	}
	names := []string{"team/a", "team/b", "team/c", "team/d", "team/k"}
	ims := map[string]*harness.Image{}
	for i, n := range names {
		ims[n] = pushNewImage(t, up, n+":v1", opts(int64(1300+i)))
	}
	cfg := harness.ConfigHeader + fmt.Sprintf(`registries:
  - name: hub
    default: true
    push: true
    connectors: [up]
    retention: {max_bytes: BUDGET, keep: ["team/k:*"]}
connectors:
  - {name: up, url: %q}
jobs:
  dangling_scan: {schedule: ""}
  verify: {schedule: ""}
  refresh: {schedule: ""}
  gc: {schedule: "", delay: 1s}
`, up.URL())
	// The budget is set once the sizes are known: start with a huge one.
	rw := harness.StartRegwarm(t, "run", strings.Replace(cfg, "BUDGET", "1TiB", 1))
	pushedIm := harness.BuildImage(t, t.TempDir(), opts(1399))
	pushImage(t, pushedIm, rw.Addr+"/team/pushed:v1")

	// Pull all (a, b, k in one second), then c and d again two seconds later.
	for _, n := range names {
		if err := skopeoPull(t.TempDir(), rw.Addr+"/"+n+":v1"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(2 * time.Second)))
	for _, n := range []string{"team/c", "team/d"} {
		if err := skopeoPull(t.TempDir(), rw.Addr+"/"+n+":v1"); err != nil {
			t.Fatal(err)
		}
	}
	waitWritten(t, rw)
	size := map[string]int64{}
	for n, im := range ims {
		waitBlobs(t, rw.DataDir, 30*time.Second, n, imageDigests(im))
		size[n] = storedBytes(t, rw.DataDir, imageDigests(im)...)
	}
	size["team/pushed"] = storedBytes(t, rw.DataDir, imageDigests(pushedIm)...)
	time.Sleep(2500 * time.Millisecond) // pulls recorded (2 s) and the delay passed

	budget := size["team/c"] + size["team/d"] + size["team/k"] + size["team/pushed"] + size["team/a"]/2
	total := budget - size["team/a"]/2 + size["team/a"] + size["team/b"]
	cfgPath := filepath.Join(t.TempDir(), "gc.yaml")
	data, err := os.ReadFile(rw.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, cfgPath, strings.Replace(string(data), "1TiB", fmt.Sprint(budget), 1))

	dry := runGC(t, cfgPath, "--dry-run")
	rep := runGC(t, cfgPath)
	t.Logf("gc: %+v", rep.Summary)
	hub := rep.Summary.ByRegistry["hub"]
	if hub.BytesBefore != total || hub.BytesAfter > budget || hub.BytesAfter != dry.Summary.ByRegistry["hub"].BytesAfter {
		t.Errorf("hub bytes %+v (dry run %+v), want before %d, after at most %d", hub, dry.Summary.ByRegistry["hub"], total, budget)
	}
	if !dry.DryRun || rep.DryRun || len(dry.Removed) != len(rep.Removed) || dry.Summary.BytesFreed != rep.Summary.BytesFreed {
		t.Errorf("dry run listed %d removals freeing %d, the run %d freeing %d", len(dry.Removed), dry.Summary.BytesFreed, len(rep.Removed), rep.Summary.BytesFreed)
	}
	tagsGone := map[string]bool{}
	for _, e := range rep.Removed {
		if e.Reason != "over-budget" {
			t.Errorf("removal %+v: reason %q, want over-budget", e, e.Reason)
		}
		if e.Tag != "" {
			tagsGone[e.Repository] = true
			if e.LastPulled == "" {
				t.Errorf("tag removal %+v without last_pulled", e)
			}
		}
	}
	if len(tagsGone) != 2 || !tagsGone["team/a"] || !tagsGone["team/b"] || rep.Summary.TagsRemoved != 2 {
		t.Errorf("tags removed %v, want team/a and team/b", tagsGone)
	}
	if m := missingBlobs(rw.DataDir, imageDigests(ims["team/a"])); len(m) != len(imageDigests(ims["team/a"])) {
		t.Errorf("team/a: %d of its blobs still stored", len(imageDigests(ims["team/a"]))-len(m))
	}
	u, err := runUsage(t, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if u.Registries[0].Bytes > budget {
		t.Errorf("usage after gc: %d bytes, budget %d", u.Registries[0].Bytes, budget)
	}

	// With the upstream stopped, what stayed is still pulled; what went is not.
	_ = up.Stop() // docker-registry dies by SIGTERM; it is down either way
	for _, n := range []string{"team/c", "team/d", "team/k", "team/pushed"} {
		if err := skopeoPull(t.TempDir(), rw.Addr+"/"+n+":v1"); err != nil {
			t.Errorf("pull %s with the upstream stopped: %v", n, err)
		}
	}
	if err := skopeoPull(t.TempDir(), rw.Addr+"/team/a:v1"); err == nil {
		t.Error("team/a was pulled with the upstream stopped after gc removed it")
	}
	if code := runRegwarmCLI(t, "scan", "--config", cfgPath).code; code != 0 {
		t.Errorf("regwarm scan after gc: exit %d", code)
	}
}

// rawManifest is an OCI image manifest of a config and layers.
func rawManifest(cfg string, cfgSize int, layers ...[]byte) []byte {
	ls := []map[string]any{}
	for _, l := range layers {
		ls = append(ls, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": harness.Digest(l), "size": len(l)})
	}
	m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": harness.MediaTypeManifest,
		"config": map[string]any{"mediaType": harness.MediaTypeConfig, "digest": cfg, "size": cfgSize}, "layers": ls})
	return m
}

// TestGCDeletedManifestFreesLayers: a manifest DELETE followed by gc frees
// the deleted image's own layers and config while a layer it shared with
// another image stays, and the other image is pulled whole.
func TestGCDeletedManifestFreesLayers(t *testing.T) {
	requireRegwarm(t)
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+`registries:
  - {name: local, default: true, push: true}
jobs:
  gc: {schedule: "", delay: 1s}
`)
	base, repo := rw.URL(), "team/app"
	shared, own1, own2 := harness.RandomBytes(1401, 64<<10), harness.RandomBytes(1402, 32<<10), harness.RandomBytes(1403, 32<<10)
	cfg1, cfg2 := []byte(`{"architecture":"amd64","os":"linux","n":1}`), []byte(`{"architecture":"amd64","os":"linux","n":2}`)
	for _, b := range [][]byte{shared, own1, own2, cfg1, cfg2} {
		pushBlobHTTP(t, base, repo, b)
	}
	m1 := rawManifest(harness.Digest(cfg1), len(cfg1), shared, own1)
	m2 := rawManifest(harness.Digest(cfg2), len(cfg2), shared, own2)
	putManifestHTTP(t, base, repo, "v1", harness.MediaTypeManifest, m1)
	putManifestHTTP(t, base, repo, "v2", harness.MediaTypeManifest, m2)
	if st := httpStatus(t, http.MethodDelete, base+"/v2/"+repo+"/manifests/"+harness.Digest(m1)); st != http.StatusAccepted {
		t.Fatalf("DELETE manifest: %d", st)
	}
	time.Sleep(1500 * time.Millisecond) // the delay
	rep := runGC(t, rw.ConfigPath)
	gone := map[string]string{}
	for _, e := range rep.Removed {
		gone[e.Blob+e.Manifest] = e.Reason
	}
	for _, d := range []string{harness.Digest(own1), harness.Digest(cfg1), harness.Digest(m1)} {
		if gone[d] != "unreferenced" {
			t.Errorf("%s: removal reason %q, want unreferenced (removed: %v)", d, gone[d], gone)
		}
	}
	if len(gone) != 3 || rep.Summary.BytesFreed != int64(len(own1)+len(cfg1)+len(m1)) {
		t.Errorf("removed %v freeing %d, want exactly the deleted image's content", gone, rep.Summary.BytesFreed)
	}
	if m := missingBlobs(rw.DataDir, []string{harness.Digest(own1), harness.Digest(cfg1)}); len(m) != 2 {
		t.Errorf("deleted image's blobs still stored: %v", m)
	}
	for _, b := range [][]byte{shared, own2, cfg2} {
		d, n, err := getBlobHTTP(httpClient, base, repo, harness.Digest(b))
		if err != nil || d != harness.Digest(b) || n != int64(len(b)) {
			t.Errorf("blob of the remaining image: %s %d %v", d, n, err)
		}
	}
	if st, d := manifestDigest(t, rw, "/v2/"+repo+"/manifests/v2"); st != http.StatusOK || d != harness.Digest(m2) {
		t.Errorf("v2 after gc: %d %s", st, d)
	}
	harness.Skopeo(t, "copy", "--src-tls-verify=false", "docker://"+rw.Addr+"/"+repo+":v2", "oci:"+filepath.Join(t.TempDir(), "out")+":v2")
}

// chunkedUpload uploads b to repo in three PATCH chunks and a closing PUT.
func chunkedUpload(base, repo string, b []byte) error {
	resp, err := httpClient.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST upload: %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	step := len(b)/3 + 1
	for off := 0; off < len(b); off += step {
		end := min(off+step, len(b))
		u, _ := url.Parse(base + "/")
		u, _ = u.Parse(loc)
		req, _ := http.NewRequest(http.MethodPatch, u.String(), bytes.NewReader(b[off:end]))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", off, end-1))
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("PATCH chunk at %d: %d", off, resp.StatusCode)
		}
		loc = resp.Header.Get("Location")
	}
	u, _ := url.Parse(base + "/")
	u, _ = u.Parse(loc)
	q := u.Query()
	q.Set("digest", harness.Digest(b))
	u.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, u.String(), nil)
	resp, err = httpClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT upload: %d", resp.StatusCode)
	}
	return nil
}

// pushIfAbsent HEADs blob b in repo and uploads it (in chunks) only when
// the registry lacks it, as clients do.
func pushIfAbsent(base, repo string, b []byte) error {
	resp, err := send(httpClient, http.MethodHead, base+"/v2/"+repo+"/blobs/"+harness.Digest(b), "")
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return chunkedUpload(base, repo, b)
}

// putManifest puts an image manifest; it returns the status error.
func putManifest(base, repo, ref string, m []byte) error {
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(m))
	req.Header.Set("Content-Type", harness.MediaTypeManifest)
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT manifest %s:%s: %d %s", repo, ref, resp.StatusCode, body)
	}
	return nil
}

// TestGCConcurrent runs gc in a loop (NATS requests on regwarm.jobs.run.gc,
// delay 1s) for 20 s while clients push images (chunked uploads, a layer
// shared by every push and re-used after it became garbage), delete some
// again, and pull cached images through a docker-registry upstream that
// the worker also syncs. Every operation succeeds, every image not deleted
// is complete, and `regwarm scan` and `regwarm verify` find no problem.
func TestGCConcurrent(t *testing.T) { testGCConcurrent(t, "", nil) }

// testGCConcurrent is TestGCConcurrent on the store the storage section
// configures ("": the filesystem), whose processes need env.
func testGCConcurrent(t *testing.T, storage string, env []string) {
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	var cached []string
	for i := range 3 {
		ref := fmt.Sprintf("team/cached%d:v1", i)
		pushNewImage(t, up, ref, harness.ImageOptions{Seed: int64(1500 + i), Layers: 1, LayerSize: 64 << 10})
		cached = append(cached, ref)
	}
	rw := harness.StartRegwarmEnv(t, "run", harness.ConfigHeader+fmt.Sprintf(`registries:
  - {name: hub, default: true, connectors: [up]}
  - {name: local, push: true}
connectors:
  - {name: up, url: %q}
jobs:
  dangling_scan: {schedule: ""}
  verify: {schedule: ""}
  refresh: {schedule: ""}
  gc: {schedule: "", delay: 1s}
`, up.URL())+storage, env)
	nc := rw.NATSConn()
	base := rw.URL()
	const window = 20 * time.Second
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var gcRuns, gcRemoved, pushes, pulls atomic.Int64

	wg.Add(1)
	go func() { // gc in a loop
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			msg, err := nc.Request("regwarm.jobs.run.gc", []byte("{}"), time.Minute)
			if errors.Is(err, nats.ErrNoResponders) && gcRuns.Load() == 0 {
				time.Sleep(100 * time.Millisecond) // the worker is subscribing
				continue
			}
			if err != nil {
				t.Errorf("gc request: %v", err)
				return
			}
			var ev struct {
				Error   string `json:"error"`
				Skipped bool   `json:"skipped"`
				Summary struct {
					Manifests int `json:"manifests_removed"`
					Blobs     int `json:"blobs_removed"`
				} `json:"summary"`
			}
			if err := json.Unmarshal(msg.Data, &ev); err != nil || (ev.Error != "" && !ev.Skipped) {
				t.Errorf("gc run: %s (%v)", msg.Data, err)
				return
			}
			gcRuns.Add(1)
			gcRemoved.Add(int64(ev.Summary.Manifests + ev.Summary.Blobs))
			time.Sleep(200 * time.Millisecond)
		}
	}()

	shared := harness.RandomBytes(1600, 48<<10)
	type pushed struct {
		repo, tag string
		blobs     [][]byte
	}
	var mu sync.Mutex
	var kept []pushed
	for w := range 2 {
		wg.Add(1)
		go func() { // pushers
			defer wg.Done()
			repo := fmt.Sprintf("local/team/p%d", w)
			var owns [][]byte
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				own := harness.RandomBytes(uint64(1700+w*1000+i), 24<<10)
				owns = append(owns, own)
				cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","w":%d,"i":%d}`, w, i))
				layers := [][]byte{shared, own}
				if i >= 5 && i%2 == 1 {
					// The layer of an image deleted 1.5 s ago: garbage gc
					// may be removing right now; HEAD finds it, so it is
					// not uploaded again.
					layers = append(layers, owns[i-5])
				}
				var err error
				for _, b := range append(slices.Clone(layers), cfg) {
					if err = pushIfAbsent(base, repo, b); err != nil {
						break
					}
				}
				tag := fmt.Sprintf("v%d", i)
				m := rawManifest(harness.Digest(cfg), len(cfg), layers...)
				if err == nil {
					err = putManifest(base, repo, tag, m)
				}
				if err != nil {
					t.Errorf("push %s:%s: %v", repo, tag, err)
					return
				}
				pushes.Add(1)
				if i%2 == 0 { // garbage for gc: its own layer and config
					if st := httpStatusErr(http.MethodDelete, base+"/v2/"+repo+"/manifests/"+harness.Digest(m)); st != http.StatusAccepted {
						t.Errorf("DELETE %s@%s: %d", repo, harness.Digest(m), st)
						return
					}
				} else {
					mu.Lock()
					kept = append(kept, pushed{repo, tag, append(layers, cfg)})
					mu.Unlock()
				}
				time.Sleep(300 * time.Millisecond) // let deleted content age past the delay
			}
		}()
	}
	wg.Add(1)
	go func() { // a real client pushing, and pulling through the cache
		defer wg.Done()
		im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1650, Layers: 1, LayerSize: 64 << 10})
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := harness.Run(context.Background(), nil, "skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
				im.OCI(), fmt.Sprintf("docker://%s/local/team/skopeo:v%d", rw.Addr, i)); err != nil {
				t.Errorf("skopeo push: %v", err)
				return
			}
			if err := skopeoPull(t.TempDir(), rw.Addr+"/"+cached[i%len(cached)]); err != nil {
				t.Errorf("skopeo pull: %v", err)
				return
			}
			pulls.Add(1)
		}
	}()
	time.Sleep(window)
	close(stop)
	wg.Wait()
	t.Logf("%d gc runs removed %d manifests and blobs beside %d pushes and %d pulls", gcRuns.Load(), gcRemoved.Load(), pushes.Load(), pulls.Load())
	if gcRuns.Load() < 3 || gcRemoved.Load() == 0 || pushes.Load() < 10 || pulls.Load() < 2 {
		t.Errorf("too little happened: %d gc runs, %d removed, %d pushes, %d pulls", gcRuns.Load(), gcRemoved.Load(), pushes.Load(), pulls.Load())
	}
	for _, p := range kept {
		for _, b := range p.blobs {
			if d, n, err := getBlobHTTP(httpClient, base, p.repo, harness.Digest(b)); err != nil || n != int64(len(b)) {
				t.Errorf("%s:%s: blob %s: %d bytes, %v", p.repo, p.tag, d, n, err)
			}
		}
	}
	waitWritten(t, rw)
	for _, ref := range cached {
		if err := skopeoPull(t.TempDir(), rw.Addr+"/"+ref); err != nil {
			t.Errorf("pull %s after the loop: %v", ref, err)
		}
	}
	for _, verb := range []string{"scan", "verify"} {
		if code, out := regwarmCLIEnv(t, env, verb, "--config", rw.ConfigPath); code != 0 {
			t.Errorf("regwarm %s: exit %d\n%s", verb, code, out)
		}
	}
	if m := harness.ScrapeMetrics(t, rw.MetricsAddr); m.Value("regwarm_job_runs_total", "job", "gc", "result", "ok") < 1 ||
		m.Value("regwarm_gc_removed_total") < 1 || m.Value("regwarm_gc_freed_bytes_total") <= 0 {
		t.Errorf("gc metrics: runs %v, removed %v, freed %v", m.Value("regwarm_job_runs_total", "job", "gc", "result", "ok"),
			m.Value("regwarm_gc_removed_total"), m.Value("regwarm_gc_freed_bytes_total"))
	}
	if _, err := os.Stat(filepath.Join(rw.DataDir, "reports", "gc-latest.json")); err != nil {
		t.Errorf("gc-latest.json: %v", err)
	}
}

// httpStatusErr sends a request without a body; 0 when it failed.
func httpStatusErr(method, url string) int {
	resp, err := send(httpClient, method, url, "")
	if err != nil {
		return 0
	}
	return resp.StatusCode
}

// TestGCKill9: `regwarm gc` killed with SIGKILL in the middle of removing
// thousands of unreferenced blobs loses nothing referenced (pulls, scan
// and verify agree), and the next run recovers what it left half-removed
// and finishes.
func TestGCKill9(t *testing.T) {
	requireRegwarm(t)
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+`registries:
  - {name: local, default: true, push: true}
jobs:
  gc: {schedule: "", delay: 1h}
`)
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1800, Layers: 2, LayerSize: 64 << 10})
	pushImage(t, im, rw.Addr+"/team/app:v1")
	// Garbage: 3000 unreferenced blobs, two hours old, written in the
	// store's layout (docs of store.FS) to be quick.
	const garbage = 3000
	old := time.Now().Add(-2 * time.Hour)
	for i := range garbage {
		b := harness.RandomBytes(uint64(10000+i), 64)
		p := blobFile(rw.DataDir, harness.Digest(b))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		n := 0
		_ = filepath.WalkDir(filepath.Join(rw.DataDir, "store", "blobs"), func(_ string, de fs.DirEntry, err error) error {
			if err == nil && !de.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	start := count()
	gc := harness.StartProcess(t, "regwarm-gc", nil, harness.RegwarmBinary(t), "gc", "--config", rw.ConfigPath)
	harness.Eventually(t, time.Minute, "gc removing blobs", func() error {
		if n := count(); n > start-100 {
			return fmt.Errorf("%d of %d blobs left", n, start)
		}
		return nil
	})
	if err := gc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = gc.Wait(10 * time.Second)
	left := count()
	if left <= start-garbage {
		t.Fatalf("gc finished before the kill (%d of %d blobs left): make the garbage larger", left, start)
	}
	// Half-removed items: trash/<session>/<n>/data (docs of store.FS).
	half, _ := filepath.Glob(filepath.Join(rw.DataDir, "store", "trash", "*", "*", "data"))
	inTrash := len(half)
	t.Logf("killed with %d of %d blobs left, %d half-removed", left, start, inTrash)

	for _, d := range imageDigests(im) {
		if _, n, err := getBlobHTTP(httpClient, rw.URL(), "team/app", d); err != nil || n == 0 {
			if st, _ := manifestDigest(t, rw, "/v2/team/app/manifests/"+d); st != http.StatusOK {
				t.Errorf("referenced %s after the kill: %v", d, err)
			}
		}
	}
	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/team/app:v1", "oci:"+filepath.Join(t.TempDir(), "out")+":v1")
	rep := runGC(t, rw.ConfigPath)
	t.Logf("second run: %+v", rep.Summary)
	if rep.Summary.Recovered != inTrash {
		t.Errorf("second run recovered %d half-removed items, want %d", rep.Summary.Recovered, inTrash)
	}
	if n := count(); n != start-garbage {
		t.Errorf("after the second run %d blobs stored, want %d (the image's)", n, start-garbage)
	}
	// Only the second run's own (empty) session may remain: trash/<session>/lock.
	if left, _ := filepath.Glob(filepath.Join(rw.DataDir, "store", "trash", "*", "*", "path")); len(left) != 0 {
		t.Errorf("trash/ after the second run: %v", left)
	}
	if sessions, _ := os.ReadDir(filepath.Join(rw.DataDir, "store", "trash")); len(sessions) > 1 {
		t.Errorf("trash/ after the second run: %d sessions, want at most its own", len(sessions))
	}
	if res := runRegwarmCLI(t, "scan", "--config", rw.ConfigPath); res.code != 0 {
		t.Errorf("regwarm scan: exit %d\n%s", res.code, res.stdout)
	}
	if res := runRegwarmCLI(t, "verify", "--config", rw.ConfigPath); res.code != 0 {
		t.Errorf("regwarm verify: exit %d\n%s", res.code, res.stdout)
	}
}

// TestGCEarly: a cache registry that passes its max_bytes starts a gc run
// before its schedule (jobs.gc.schedule is off here), which brings it
// back under budget; a disk below jobs.gc.disk_watermark makes a run
// evict the least recently pulled images of registries with retention.
func TestGCEarly(t *testing.T) {
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	opts := func(seed int64) harness.ImageOptions {
		return harness.ImageOptions{Seed: seed, Platforms: []string{hostPlatform()}, Layers: 1, LayerSize: 200 << 10}
	}
	a := pushNewImage(t, up, "team/a:v1", opts(1901))
	b := pushNewImage(t, up, "team/b:v1", opts(1902))
	const budget = 600_000 // one image fits, two do not
	rw := harness.StartRegwarm(t, "run", harness.ConfigHeader+fmt.Sprintf(`registries:
  - name: hub
    default: true
    connectors: [up]
    retention: {max_bytes: %d}
connectors:
  - {name: up, url: %q}
jobs:
  dangling_scan: {schedule: ""}
  verify: {schedule: ""}
  refresh: {schedule: ""}
  gc: {schedule: "", delay: 1s, check_every: 1s}
`, budget, up.URL()))
	// Every gc series exists from start-up.
	m := harness.ScrapeMetrics(t, rw.MetricsAddr)
	for _, kind := range []string{"tag", "manifest", "blob"} {
		for _, reason := range []string{"over-budget", "unpulled", "untagged", "unreferenced"} {
			if !m.Has("regwarm_gc_removed_total", "registry", "hub", "kind", kind, "reason", reason) {
				t.Errorf("no regwarm_gc_removed_total{registry=hub,kind=%s,reason=%s} at start-up", kind, reason)
			}
		}
	}
	if !m.Has("regwarm_gc_freed_bytes_total") || !m.Has("regwarm_registry_budget_bytes", "registry", "hub") ||
		m.Value("regwarm_registry_budget_bytes", "registry", "hub") != budget {
		t.Errorf("gc metrics at start-up: freed %v, budget %v", m.Has("regwarm_gc_freed_bytes_total"), m.Value("regwarm_registry_budget_bytes", "registry", "hub"))
	}
	if err := skopeoPull(t.TempDir(), rw.Addr+"/team/a:v1"); err != nil {
		t.Fatal(err)
	}
	waitWritten(t, rw)
	waitBlobs(t, rw.DataDir, 30*time.Second, "team/a", imageDigests(a))
	time.Sleep(2 * time.Second) // older than the delay, and pulled in an earlier second
	if err := skopeoPull(t.TempDir(), rw.Addr+"/team/b:v1"); err != nil {
		t.Fatal(err)
	}
	waitWritten(t, rw)
	waitBlobs(t, rw.DataDir, 30*time.Second, "team/b", imageDigests(b))
	if size := storedBytes(t, rw.DataDir, append(imageDigests(a), imageDigests(b)...)...); size <= budget {
		t.Fatalf("two images are %d bytes, not over the budget %d", size, budget)
	}
	harness.Eventually(t, 30*time.Second, "an early gc run removing team/a", func() error {
		m := harness.ScrapeMetrics(t, rw.MetricsAddr)
		if n := m.Value("regwarm_gc_early_runs_total", "trigger", "budget"); n != 1 {
			return fmt.Errorf("%v early runs", n)
		}
		if n := m.Value("regwarm_gc_removed_total", "registry", "hub", "kind", "tag", "reason", "over-budget"); n != 1 {
			return fmt.Errorf("%v tags removed", n)
		}
		return nil
	})
	rep, _ := readGCReport(t, filepath.Join(rw.DataDir, "reports", "gc-latest.json"))
	if hub := rep.Summary.ByRegistry["hub"]; hub.BytesAfter > budget || rep.Summary.TagsRemoved != 1 {
		t.Errorf("early run: %+v", rep.Summary)
	}
	if st, _ := manifestDigest(t, rw, "/v2/team/b/manifests/v1"); st != http.StatusOK {
		t.Errorf("team/b after the early run: %d", st)
	}
	if m := missingBlobs(rw.DataDir, imageDigests(a)); len(m) != len(imageDigests(a)) {
		t.Errorf("team/a: %d blobs still stored", len(imageDigests(a))-len(m))
	}

	// A disk below the watermark (here: always) evicts what retention
	// manages, least recently pulled first, even under budget.
	data, err := os.ReadFile(rw.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "watermark.yaml")
	writeFile(t, cfgPath, strings.Replace(string(data), "check_every: 1s", "check_every: 1s, disk_watermark: 1000TiB", 1))
	time.Sleep(1100 * time.Millisecond)
	wm := runGC(t, cfgPath)
	if wm.Summary.TagsRemoved != 1 || len(wm.Removed) == 0 || wm.Removed[0].Reason != "over-budget" || wm.Removed[0].Repository != "team/b" {
		t.Errorf("run below the watermark: %+v %+v", wm.Summary, wm.Removed)
	}
}

// readGCReport reads a saved gc report.
func readGCReport(t *testing.T, path string) (gcReport, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep gcReport
	if err := json.Unmarshal(b, &rep); err != nil || rep.Job != "gc" {
		t.Fatalf("%s: %v (job %q)", path, err, rep.Job)
	}
	return rep, b
}
