package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/e2e/harness"
	"github.com/regwarm/regwarm/jobs"
)

// requestJob runs job on one worker through a NATS request on
// regwarm.jobs.run.<job> and returns the reply. Until a worker has
// subscribed the request has no responders; it is sent again then, and
// only then.
func requestJob(t *testing.T, nc *nats.Conn, job string, timeout time.Duration) daemon.ReportEvent {
	t.Helper()
	subject := "regwarm.jobs.run." + job
	deadline := time.Now().Add(20 * time.Second)
	for {
		start := time.Now()
		m, err := nc.Request(subject, nil, timeout)
		if errors.Is(err, nats.ErrNoResponders) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("request on %s: %v", subject, err)
		}
		t.Logf("request on %s answered in %.2fs: %s", subject, time.Since(start).Seconds(), m.Data)
		var e daemon.ReportEvent
		if err := json.Unmarshal(m.Data, &e); err != nil {
			t.Fatalf("reply on %s: %v: %q", subject, err, m.Data)
		}
		return e
	}
}

// blobLinkFile is where the filesystem store under dataDir links blob d
// into a repository (internal/store/fs.go).
func blobLinkFile(dataDir, registry, repo, d string) string {
	alg, hx, _ := strings.Cut(d, ":")
	return filepath.Join(dataDir, "store", "registries", registry, "repos", filepath.FromSlash(repo), "_blobs", alg, hx)
}

// removeExisting deletes a file that must exist, so that a change of the
// store layout fails the test instead of deleting nothing.
func removeExisting(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatalf("remove %s: %v", path, err)
	}
}

// getManifestThrough GETs repo:ref through regwarm as an OCI image manifest
// and returns its digest; regwarm stores the tag on the way.
func getManifestThrough(t *testing.T, rw *harness.Regwarm, repo, ref string) string {
	t.Helper()
	resp, err := send(httpClient, http.MethodGet, rw.URL()+"/v2/hub/"+repo+"/manifests/"+ref, harness.MediaTypeManifest)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest hub/%s:%s through regwarm: status %d", repo, ref, resp.StatusCode)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

// flipByte corrupts the file at path in place (same size, one byte
// changed) and returns the corrupted content.
func flipByte(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestScanDanglingReferences pulls two images through serve, then deletes
// one layer of image A from the store and from the upstream, and one layer
// of image B from the store only. `regwarm scan` exits 1 and reports
// exactly A's layer as missing-local-and-upstream, with registry,
// repository, manifest, its tags and the connector, while B's layer counts
// as remote_only; the text form names the same layer. A scan run on a
// worker through regwarm.jobs.run.dangling_scan with repair enabled queues
// a sync of B's manifest, which brings the layer back; the next scan lists
// only A. `regwarm verify` (CLI and on-demand on the worker) reports A's
// layer as referenced-but-absent, and with the upstream down the scan
// lists it as an upstream error that is not counted (exit 0).
func TestScanDanglingReferences(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repoA, repoB = "e2e/scan-a", "e2e/scan-b"
	imA := pushNewImage(t, up, repoA+":v1", harness.ImageOptions{Seed: 1101})
	imB := pushNewImage(t, up, repoB+":v1", harness.ImageOptions{Seed: 1102})
	amdA, amdB := imA.Platform("linux/amd64"), imB.Platform("linux/amd64")
	// Two tags on A's amd64 manifest, so that its problem names tags.
	for _, tag := range []string{"v1-amd64", "amd64"} {
		putManifestHTTP(t, up.URL(), repoA, tag, harness.MediaTypeManifest, imA.ReadBlob(t, amdA.Digest))
	}

	// serve without NATS: no miss events, so no worker repairs anything
	// behind the test's back.
	rw := harness.StartRegwarm(t, "serve", hubConfig(up.URL(), 5*time.Minute))
	for _, repo := range []string{repoA, repoB} {
		harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+t.TempDir()+":v1")
	}
	for _, tag := range []string{"v1-amd64", "amd64"} {
		if d := getManifestThrough(t, rw, repoA, tag); d != amdA.Digest {
			t.Fatalf("hub/%s:%s is %s, want %s", repoA, tag, d, amdA.Digest)
		}
	}
	all := append(blobsOf(imA, "linux/amd64", "linux/arm64"), blobsOf(imB, "linux/amd64", "linux/arm64")...)
	waitWritten(t, rw)
	if m := missingBlobs(rw.DataDir, all); len(m) > 0 {
		t.Fatalf("after the pulls, blobs missing from the store: %v", m)
	}

	// A: a platform layer gone here (content and link) and upstream.
	layerA := amdA.Layers[1]
	removeExisting(t, blobFile(rw.DataDir, layerA))
	removeExisting(t, blobLinkFile(rw.DataDir, "hub", repoA, layerA))
	if code := httpStatus(t, http.MethodDelete, up.URL()+"/v2/"+repoA+"/blobs/"+layerA); code != http.StatusAccepted {
		t.Fatalf("DELETE %s blob %s upstream: status %d, want 202", repoA, layerA, code)
	}
	if code := httpStatus(t, http.MethodHead, up.URL()+"/v2/"+repoA+"/blobs/"+layerA); code != http.StatusNotFound {
		t.Fatalf("HEAD %s blob %s upstream after DELETE: status %d, want 404", repoA, layerA, code)
	}
	// B: a platform layer's content gone here only; its link stays.
	layerB := amdB.Layers[1]
	removeExisting(t, blobFile(rw.DataDir, layerB))
	if code := httpStatus(t, http.MethodHead, up.URL()+"/v2/"+repoB+"/blobs/"+layerB); code != http.StatusOK {
		t.Fatalf("HEAD %s blob %s upstream: status %d, want 200", repoB, layerB, code)
	}

	wantA := jobs.Problem{Registry: "hub", Repository: repoA, Manifest: amdA.Digest, Tags: []string{"amd64", "v1-amd64"},
		Missing: layerA, MediaType: harness.MediaTypeLayer, Connector: "up", Reason: "missing-local-and-upstream"}
	// Per repository: an index with 2 children, 2 images with a config
	// and 3 layers each: 10 references.
	wantSummary := jobs.Summary{Registries: 1, Manifests: 6, References: 20, Local: 18, RemoteOnly: 1, Problems: 1,
		ByRegistry: map[string]int{"hub": 1}}
	checkScan := func(what string, rep jobs.Report, sum jobs.Summary) {
		t.Helper()
		if rep.Job != "dangling_scan" {
			t.Errorf("%s: job %q, want dangling_scan", what, rep.Job)
		}
		if !reflect.DeepEqual(rep.Summary, sum) {
			t.Errorf("%s: summary\n got %+v\nwant %+v", what, rep.Summary, sum)
		}
		if len(rep.Problems) != 1 || !reflect.DeepEqual(rep.Problems[0], wantA) {
			t.Errorf("%s: problems\n got %+v\nwant exactly [%+v]", what, rep.Problems, wantA)
		}
	}

	out := filepath.Join(t.TempDir(), "scan.json")
	res := runRegwarmCLI(t, "scan", "--config", rw.ConfigPath, "--format", "json", "--output", out)
	res.wantCode(t, 1)
	if res.stdout != "" {
		t.Errorf("scan --output: stdout should be empty, got %q", res.stdout)
	}
	rep, raw := readReport(t, out)
	t.Logf("scan report (--format json --output):\n%s", raw)
	checkScan("scan --output", rep, wantSummary)

	// JSON on stdout: logs must stay on stderr.
	res = runRegwarmCLI(t, "scan", "--config", rw.ConfigPath, "--format", "json")
	res.wantCode(t, 1)
	checkScan("scan json on stdout", decodeReport(t, "scan stdout", []byte(res.stdout)), wantSummary)

	res = runRegwarmCLI(t, "scan", "--config", rw.ConfigPath)
	res.wantCode(t, 1)
	t.Logf("scan report (text):\n%s", res.stdout)
	line := regexp.MustCompile(`(?m)^missing-local-and-upstream +hub/` + regexp.QuoteMeta(repoA) + ` manifest ` +
		regexp.QuoteMeta(amdA.Digest[:19]) + ` \(tags amd64,v1-amd64\) missing ` + regexp.QuoteMeta(layerA) + `.* via up$`)
	for _, want := range []string{"1 registries, 6 manifests, 20 references: 18 local, 1 remote-only, 1 dangling"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("scan text: no %q in\n%s", want, res.stdout)
		}
	}
	if !line.MatchString(res.stdout) {
		t.Errorf("scan text: no problem line matching %s in\n%s", line, res.stdout)
	}
	if strings.Contains(res.stdout, layerB) {
		t.Errorf("scan text names B's layer %s, which is still upstream:\n%s", layerB, res.stdout)
	}

	// Repair through a worker.
	ns := harness.StartNATS(t)
	cfg := workerConfig(ns.URL(), up.URL()) + strings.Replace(jobsOff, "repair: false", "repair: true", 1)
	w := harness.StartWorker(t, "worker-1", cfg, harness.ConfigVars{DataDir: rw.DataDir})
	// Every job and result is exported from start-up.
	m := harness.ScrapeMetrics(t, w.MetricsAddr)
	for _, job := range []string{"dangling_scan", "verify", "refresh", "gc"} {
		for _, result := range []string{"ok", "error", "skipped"} {
			if !m.Has("regwarm_job_runs_total", "job", job, "result", result) {
				t.Errorf(`worker: no regwarm_job_runs_total{job=%q,result=%q} at start-up`, job, result)
			}
		}
		if !m.Has("regwarm_job_last_success_timestamp_seconds", "job", job) {
			t.Errorf(`worker: no regwarm_job_last_success_timestamp_seconds{job=%q} at start-up`, job)
		}
	}
	if !m.Has("regwarm_dangling_references", "registry", "hub") {
		t.Errorf(`worker: no regwarm_dangling_references{registry="hub"} at start-up`)
	}
	nc := harness.NATSConn(t, ns.URL())
	reports := watchReports(t, nc)
	syncs := watchEvents(t, ns.URL())
	start := time.Now()
	ev := requestJob(t, nc, "dangling_scan", time.Minute)
	repairSummary := wantSummary
	repairSummary.RepairsQueued = 1
	if ev.Job != "dangling_scan" || !reportOK(ev) || ev.Problems != 1 || ev.Worker == "" || ev.Started.IsZero() ||
		!reflect.DeepEqual(ev.Summary, repairSummary) {
		t.Errorf("on-demand scan reply: %+v\nwant job dangling_scan, no error, 1 problem, a worker, summary %+v", ev, repairSummary)
	}
	reportsDir := filepath.Join(rw.DataDir, "reports")
	if !regexp.MustCompile(`^dangling_scan-\d{8}T\d{6}(\.\d{3})?Z\.json$`).MatchString(filepath.Base(ev.Path)) || filepath.Dir(ev.Path) != reportsDir {
		t.Errorf("on-demand scan: report path %q, want %s/dangling_scan-<UTC timestamp>.json", ev.Path, reportsDir)
	} else {
		saved, _ := readReport(t, ev.Path)
		checkScan("saved report", saved, repairSummary)
		latest, _ := readReport(t, filepath.Join(reportsDir, "dangling_scan-latest.json"))
		if !reflect.DeepEqual(latest, saved) {
			t.Errorf("dangling_scan-latest.json differs from %s:\n%+v\n%+v", ev.Path, latest, saved)
		}
	}
	pub := reports.Wait(t, 10*time.Second, "the on-demand scan's event on "+reportSubject, func(e daemon.ReportEvent) bool {
		return e.Job == "dangling_scan"
	})
	if !pub.Started.Equal(ev.Started) || pub.Path != ev.Path {
		t.Errorf("published event %+v differs from the reply %+v", pub, ev)
	}
	done := syncs.Wait(t, 30*time.Second, "the repair's sync of B's manifest", func(e syncEvent) bool {
		return e.Digest == amdB.Digest
	})
	if !done.done() || done.Image != "hub/"+repoB+"@"+amdB.Digest || done.BlobsFetched != 1 {
		t.Errorf("repair sync: %v; want done, image hub/%s@%s, 1 blob fetched", done, repoB, amdB.Digest)
	}
	waitBlobs(t, rw.DataDir, 30*time.Second, "B's layer back in the store", []string{layerB})
	t.Logf("B's layer back %.2fs after the scan request", time.Since(start).Seconds())
	if got, err := fileDigest(blobFile(rw.DataDir, layerB)); err != nil || got != layerB {
		t.Errorf("repaired layer %s hashes to %s (%v)", layerB, got, err)
	}
	for _, e := range syncs.All() {
		if strings.Contains(e.Image, repoA) {
			t.Errorf("repair queued a sync of A, whose layer is gone upstream: %v", e)
		}
	}
	m = harness.ScrapeMetrics(t, w.MetricsAddr)
	if v := m.Value("regwarm_job_runs_total", "job", "dangling_scan", "result", "ok"); v != 1 {
		t.Errorf(`regwarm_job_runs_total{job="dangling_scan",result="ok"} = %v, want 1`, v)
	}
	if v := m.Value("regwarm_dangling_references", "registry", "hub"); v != 1 {
		t.Errorf(`regwarm_dangling_references{registry="hub"} = %v, want 1`, v)
	}
	if v := m.Value("regwarm_job_last_success_timestamp_seconds", "job", "dangling_scan"); v < float64(start.Unix()) {
		t.Errorf(`regwarm_job_last_success_timestamp_seconds{job="dangling_scan"} = %v, want at least %d`, v, start.Unix())
	}

	// An on-demand verify on the worker writes its own report.
	vev := requestJob(t, nc, "verify", time.Minute)
	if vev.Job != "verify" || !reportOK(vev) || vev.Problems != 1 || vev.Summary.Absent != 1 || vev.Summary.Corrupt != 0 ||
		filepath.Dir(vev.Path) != reportsDir || !strings.HasPrefix(filepath.Base(vev.Path), "verify-") {
		t.Errorf("on-demand verify reply: %+v\nwant job verify, 1 problem (A's layer absent), a report in %s", vev, reportsDir)
	} else if vrep, _ := readReport(t, vev.Path); vrep.Job != "verify" || vrep.Summary.Absent != 1 {
		t.Errorf("on-demand verify report %s: %+v", vev.Path, vrep)
	}

	// B is whole again; A is still dangling.
	res = runRegwarmCLI(t, "scan", "--config", rw.ConfigPath, "--format", "json", "--output", out)
	res.wantCode(t, 1)
	rep, _ = readReport(t, out)
	fixed := wantSummary
	fixed.Local, fixed.RemoteOnly = 19, 0
	checkScan("scan after the repair", rep, fixed)

	// The integrity check sees A's layer as referenced but absent.
	vout := filepath.Join(t.TempDir(), "verify.json")
	res = runRegwarmCLI(t, "verify", "--config", rw.ConfigPath, "--format", "json", "--output", vout)
	res.wantCode(t, 1)
	vrep, _ := readReport(t, vout)
	wantAbsent := jobs.Problem{Registry: "hub", Repository: repoA, Manifest: amdA.Digest, Missing: layerA,
		MediaType: harness.MediaTypeLayer, Reason: "referenced-but-absent"}
	if vrep.Summary.Absent != 1 || vrep.Summary.Corrupt != 0 || vrep.Summary.Problems != 1 ||
		len(vrep.Problems) != 1 || !reflect.DeepEqual(vrep.Problems[0], wantAbsent) {
		t.Errorf("verify: summary %+v, problems %+v; want exactly [%+v]", vrep.Summary, vrep.Problems, wantAbsent)
	}

	// With the upstream down nothing can be told about A's layer: an
	// upstream error is listed but not counted, and the scan exits 0.
	if err := up.Stop(); err != nil {
		t.Logf("stop docker-registry: %v", err)
	}
	res = runRegwarmCLI(t, "scan", "--config", rw.ConfigPath, "--format", "json", "--output", out)
	res.wantCode(t, 0)
	rep, raw = readReport(t, out)
	down := fixed
	down.Problems, down.ByRegistry, down.UpstreamErrors = 0, map[string]int{"hub": 0}, 1
	if !reflect.DeepEqual(rep.Summary, down) || len(rep.Problems) != 1 || rep.Problems[0].Reason != "upstream-error" ||
		rep.Problems[0].Missing != layerA || rep.Problems[0].Connector != "up" || rep.Problems[0].Detail == "" {
		t.Errorf("scan with the upstream down: want summary %+v and one upstream-error for %s via up with a detail, got\n%s", down, layerA, raw)
	}
}

// TestVerifyQuarantinesCorruptBlob flips a byte in a stored layer. With
// the upstream up, `regwarm verify` exits 1, reports the layer as corrupt,
// moves the file to <store>/quarantine/ and fetches it again. With the
// upstream down it still quarantines and reports the failed re-fetch; a
// pull through serve then brings correct bytes, and a last verify exits 0,
// listing a stray blob as unreferenced (with its size) without counting it.
func TestVerifyQuarantinesCorruptBlob(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/verify"
	im := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 1103})
	rw := harness.StartRegwarm(t, "serve", hubConfig(up.URL(), 5*time.Minute))
	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+t.TempDir()+":v1")
	waitWritten(t, rw)
	if m := missingBlobs(rw.DataDir, im.AllBlobs()); len(m) > 0 {
		t.Fatalf("after the pull, blobs missing from the store: %v", m)
	}
	quarantine := filepath.Join(rw.DataDir, "store", "quarantine")
	out := filepath.Join(t.TempDir(), "verify.json")

	verify := func(what, layer, platformManifest string, size int64) jobs.Problem {
		t.Helper()
		res := runRegwarmCLI(t, "verify", "--config", rw.ConfigPath, "--format", "json", "--output", out)
		res.wantCode(t, 1)
		rep, raw := readReport(t, out)
		t.Logf("%s: verify report:\n%s", what, raw)
		if rep.Job != "verify" || rep.Summary.Blobs != len(im.AllBlobs()) || rep.Summary.Manifests != 3 ||
			rep.Summary.Absent != 0 || rep.Summary.Unreferenced != 0 {
			t.Errorf("%s: report %+v; want job verify, %d blobs, 3 manifests, nothing absent or unreferenced",
				what, rep.Summary, len(im.AllBlobs()))
		}
		if rep.Summary.Corrupt != 1 || rep.Summary.Quarantined != 1 || rep.Summary.Problems != 1 || rep.Summary.ByRegistry["hub"] != 1 {
			t.Errorf("%s: summary %+v; want 1 corrupt, 1 quarantined, 1 problem, by_registry hub 1", what, rep.Summary)
		}
		if len(rep.Problems) != 1 {
			t.Fatalf("%s: problems %+v, want exactly one", what, rep.Problems)
		}
		p := rep.Problems[0]
		if p.Reason != "corrupt" || p.Digest != layer || p.Size != size || p.Registry != "hub" || p.Repository != repo ||
			p.Manifest != platformManifest || !strings.Contains(p.Detail, "quarantined to "+quarantine+string(filepath.Separator)) {
			t.Errorf("%s: problem %+v; want corrupt %s (%d bytes) of hub/%s manifest %s, quarantined to %s/…",
				what, p, layer, size, repo, platformManifest, quarantine)
		}
		return p
	}
	quarantined := func(what, layer string, content []byte) {
		t.Helper()
		hx := strings.TrimPrefix(layer, "sha256:")
		matches, _ := filepath.Glob(filepath.Join(quarantine, "sha256-"+hx+"-*"))
		if len(matches) != 1 {
			t.Fatalf("%s: %d files for %s in %s, want 1", what, len(matches), layer, quarantine)
		}
		if b, err := os.ReadFile(matches[0]); err != nil || !bytes.Equal(b, content) {
			t.Errorf("%s: quarantined file %s does not hold the corrupted bytes (%v)", what, matches[0], err)
		}
	}

	// Upstream up: verify re-fetches.
	amd := im.Platform("linux/amd64")
	x := amd.Layers[1]
	sizeX := int64(len(im.ReadBlob(t, x)))
	badX := flipByte(t, blobFile(rw.DataDir, x))
	p := verify("upstream up", x, amd.Digest, sizeX)
	if !strings.Contains(p.Detail, "re-fetched from upstream") {
		t.Errorf("upstream up: detail %q does not say the blob was re-fetched", p.Detail)
	}
	quarantined("upstream up", x, badX)
	if got, err := fileDigest(blobFile(rw.DataDir, x)); err != nil || got != x {
		t.Errorf("upstream up: after verify the blob file of %s hashes to %s (%v), want re-fetched content", x, got, err)
	}
	if n := up.CountRequests("GET", "/v2/"+repo+"/blobs/"+x); n != 2 {
		t.Errorf("upstream: %d GETs of %s, want 2 (the pull and the re-fetch)", n, x)
	}
	if got, n, err := getBlobHTTP(httpClient, rw.URL(), "hub/"+repo, x); err != nil || got != x || n != sizeX {
		t.Errorf("GET %s through serve after verify: %s, %d bytes, %v", x, got, n, err)
	}

	// Upstream down: quarantined, re-fetch fails, serve fetches it later.
	arm := im.Platform("linux/arm64")
	y := arm.Layers[1]
	sizeY := int64(len(im.ReadBlob(t, y)))
	if err := up.Stop(); err != nil {
		t.Logf("stop docker-registry: %v", err)
	}
	badY := flipByte(t, blobFile(rw.DataDir, y))
	p = verify("upstream down", y, arm.Digest, sizeY)
	if !strings.Contains(p.Detail, "re-fetch failed") {
		t.Errorf("upstream down: detail %q does not say the re-fetch failed", p.Detail)
	}
	quarantined("upstream down", y, badY)
	if _, err := os.Stat(blobFile(rw.DataDir, y)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("upstream down: the corrupt blob file of %s is still in place (%v)", y, err)
	}
	up.Start()
	if got, n, err := getBlobHTTP(httpClient, rw.URL(), "hub/"+repo, y); err != nil || got != y || n != sizeY {
		t.Errorf("GET %s through serve after the quarantine: %s, %d bytes, %v; want the re-fetched blob", y, got, n, err)
	}
	// The client gets the last byte once it is verified; the store write
	// completes right after, off the response path.
	waitBlobs(t, rw.DataDir, 10*time.Second, "re-fetched blob stored", []string{y})
	if got, err := fileDigest(blobFile(rw.DataDir, y)); err != nil || got != y {
		t.Errorf("after the pull the blob file of %s hashes to %s (%v)", y, got, err)
	}

	// Repaired, plus a stored blob no manifest references: garbage is
	// listed with its size but is no problem, so verify exits 0.
	junk := harness.RandomBytes(1106, 1000)
	junkDigest := harness.Digest(junk)
	if err := os.MkdirAll(filepath.Dir(blobFile(rw.DataDir, junkDigest)), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, blobFile(rw.DataDir, junkDigest), string(junk))
	res := runRegwarmCLI(t, "verify", "--config", rw.ConfigPath, "--format", "json", "--output", out)
	res.wantCode(t, 0)
	rep, raw := readReport(t, out)
	t.Logf("repaired: verify report:\n%s", raw)
	want := jobs.Summary{Registries: 1, Manifests: 3, ByRegistry: map[string]int{"hub": 0}, Blobs: len(im.AllBlobs()) + 1,
		Bytes: rep.Summary.Bytes, Unreferenced: 1, UnreferencedBytes: int64(len(junk))}
	wantProblems := []jobs.Problem{{Reason: "unreferenced", Digest: junkDigest, Size: int64(len(junk))}}
	if !reflect.DeepEqual(rep.Summary, want) || !reflect.DeepEqual(rep.Problems, wantProblems) {
		t.Errorf("repaired: summary %+v, problems %+v\nwant %+v, %+v", rep.Summary, rep.Problems, want, wantProblems)
	}
}

// TestScanVerifyExitCodes checks the exit codes of the one-shot commands
// without a store to scan: 2 with a config file that does not exist, with
// an invalid config and with a bad --format; 0 for a clean (empty) store,
// also without --config (the defaults of run).
func TestScanVerifyExitCodes(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.yaml")
	invalid := filepath.Join(dir, "invalid.yaml")
	writeFile(t, valid, fmt.Sprintf("version: 1\ndata_dir: %q\nregistries:\n  - {name: local, default: true, push: true}\n", filepath.Join(dir, "data")))
	// An unknown key, and a registry that neither accepts pushes nor has a connector.
	writeFile(t, invalid, fmt.Sprintf("version: 1\ndata_dir: %q\nbogus_key: 1\nregistries:\n  - {name: local}\n", filepath.Join(dir, "data")))
	for _, cmd := range []string{"scan", "verify"} {
		for _, tc := range []struct {
			name string
			args []string
			code int
			want string // in stderr
		}{
			{"no --config: run's defaults", []string{"--data-dir", filepath.Join(dir, "defaults"), "--format", "json"}, 0, ""},
			{"missing file", []string{"--config", filepath.Join(dir, "absent.yaml")}, 2, "absent.yaml"},
			{"invalid config", []string{"--config", invalid}, 2, "bogus_key"},
			{"bad format", []string{"--config", valid, "--format", "xml"}, 2, "format"},
			{"clean store", []string{"--config", valid, "--format", "json"}, 0, ""},
		} {
			res := runRegwarmCLI(t, append([]string{cmd}, tc.args...)...)
			if res.code != tc.code || !strings.Contains(res.stderr, tc.want) {
				t.Errorf("regwarm %s (%s): exit %d, want %d with %q in stderr\nstderr:\n%s",
					cmd, tc.name, res.code, tc.code, tc.want, harness.LastLines(res.stderr, 10))
				continue
			}
			if tc.code == 2 && res.stdout != "" {
				t.Errorf("regwarm %s (%s): exit 2 but a report on stdout:\n%s", cmd, tc.name, res.stdout)
			}
			if tc.code == 0 {
				rep := decodeReport(t, "regwarm "+cmd+" of an empty store", []byte(res.stdout))
				if rep.Summary.Problems != 0 || len(rep.Problems) != 0 || rep.Summary.ByRegistry["local"] != 0 {
					t.Errorf("regwarm %s of an empty store: %+v", cmd, rep)
				}
			}
		}
	}
}
