package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regwarm/regwarm/e2e/harness"
)

// reportSubject carries the summaries of finished job runs.
const reportSubject = "regwarm.events.report"

// jobSummary is a report's summary (docs/reports.md); fields left out of
// the JSON read as 0.
type jobSummary struct {
	Registries        int            `json:"registries"`
	Manifests         int            `json:"manifests"`
	References        int            `json:"references"`
	Local             int            `json:"local"`
	RemoteOnly        int            `json:"remote_only"`
	Problems          int            `json:"problems"`
	ByRegistry        map[string]int `json:"by_registry"`
	Blobs             int            `json:"blobs"`
	Bytes             int64          `json:"bytes"`
	Corrupt           int            `json:"corrupt"`
	Quarantined       int            `json:"quarantined"`
	Refetched         int            `json:"refetched"`
	Absent            int            `json:"absent"`
	Unreferenced      int            `json:"unreferenced"`
	UnreferencedBytes int64          `json:"unreferenced_bytes"`
	UpstreamErrors    int            `json:"upstream_errors"`
	RepairsQueued     int            `json:"repairs_queued"`
}

// jobProblem is one finding of a report.
type jobProblem struct {
	Registry   string   `json:"registry"`
	Repository string   `json:"repository"`
	Manifest   string   `json:"manifest"`
	Tags       []string `json:"tags"`
	Missing    string   `json:"missing"`
	MediaType  string   `json:"media_type"`
	Connector  string   `json:"connector"`
	Reason     string   `json:"reason"`
	Digest     string   `json:"digest"`
	Size       int64    `json:"size"`
	Detail     string   `json:"detail"`
}

// jobReport is a scan or verify report, version 1.
type jobReport struct {
	Version  int          `json:"version"`
	Job      string       `json:"job"`
	Started  time.Time    `json:"started"`
	Finished time.Time    `json:"finished"`
	Summary  jobSummary   `json:"summary"`
	Problems []jobProblem `json:"problems"`
}

// reportEvent is a regwarm.events.report payload, which is also the reply
// to a regwarm.jobs.run.<job> request.
type reportEvent struct {
	Job      string     `json:"job"`
	Started  time.Time  `json:"started"`
	Finished time.Time  `json:"finished"`
	Summary  jobSummary `json:"summary"`
	Problems int        `json:"problems"`
	Path     string     `json:"path"`
	Worker   string     `json:"worker"`
	Error    string     `json:"error"`
	Skipped  bool       `json:"skipped"`
}

func (e reportEvent) ok() bool { return e.Error == "" && !e.Skipped }

// decodeReport parses a report and checks the parts of its shape that the
// contract promises: version 1, the always-present summary fields, and a
// problems array that is never null.
func decodeReport(t *testing.T, what string, b []byte) jobReport {
	t.Helper()
	var raw struct {
		Summary  map[string]json.RawMessage `json:"summary"`
		Problems json.RawMessage            `json:"problems"`
	}
	var rep jobReport
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
func readReport(t *testing.T, path string) (jobReport, []byte) {
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
			strings.Join(r.args, " "), r.code, code, r.stdout, lastLines(r.stderr, 30))
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// reportLog collects every event on regwarm.events.report.
type reportLog struct {
	mu     sync.Mutex
	events []reportEvent
	bad    []string
}

// watchReports subscribes to regwarm.events.report until the test ends.
func watchReports(t *testing.T, nc *nats.Conn) *reportLog {
	t.Helper()
	l := &reportLog{}
	_, err := nc.Subscribe(reportSubject, func(m *nats.Msg) {
		var e reportEvent
		err := json.Unmarshal(m.Data, &e)
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.bad = append(l.bad, fmt.Sprintf("%v: %q", err, m.Data))
			return
		}
		l.events = append(l.events, e)
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatalf("subscribe to %s: %v", reportSubject, err)
	}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, b := range l.bad {
			t.Errorf("undecodable report event %s", b)
		}
	})
	return l
}

func (l *reportLog) all() []reportEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]reportEvent(nil), l.events...)
}

// wait returns the first event that matches, polling up to timeout.
func (l *reportLog) wait(t *testing.T, timeout time.Duration, what string, match func(reportEvent) bool) reportEvent {
	t.Helper()
	var found reportEvent
	harness.Eventually(t, timeout, what, func() error {
		evs := l.all()
		for _, e := range evs {
			if match(e) {
				found = e
				return nil
			}
		}
		return fmt.Errorf("%d report events so far: %+v", len(evs), evs)
	})
	return found
}

// requestJob runs job on one worker through a NATS request on
// regwarm.jobs.run.<job> and returns the reply. Until a worker has
// subscribed the request has no responders; it is sent again then, and
// only then.
func requestJob(t *testing.T, nc *nats.Conn, job string, timeout time.Duration) reportEvent {
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
		var e reportEvent
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

// upstreamStatus sends a request without body to the upstream and returns
// the status.
func upstreamStatus(t *testing.T, method, url string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// getManifestThrough GETs repo:ref through regwarm as an OCI image manifest
// and returns its digest; regwarm stores the tag on the way.
func getManifestThrough(t *testing.T, rw *harness.Regwarm, repo, ref string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, rw.URL()+"/v2/hub/"+repo+"/manifests/"+ref, nil)
	req.Header.Set("Accept", harness.MediaTypeManifest)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
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

// jobsOff disables every scheduled job; tests override one at a time.
const jobsOff = `jobs:
  dangling_scan: {schedule: "", repair: false}
  verify: {schedule: ""}
  refresh: {schedule: ""}
`

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
	imA := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1101})
	imB := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1102})
	const repoA, repoB = "e2e/scan-a", "e2e/scan-b"
	pushImage(t, imA, up.Addr+"/"+repoA+":v1")
	pushImage(t, imB, up.Addr+"/"+repoB+":v1")
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
	if m := missingBlobs(rw.DataDir, all); len(m) > 0 {
		t.Fatalf("after the pulls, blobs missing from the store: %v", m)
	}

	// A: a platform layer gone here (content and link) and upstream.
	layerA := amdA.Layers[1]
	removeExisting(t, blobFile(rw.DataDir, layerA))
	removeExisting(t, blobLinkFile(rw.DataDir, "hub", repoA, layerA))
	if code := upstreamStatus(t, http.MethodDelete, up.URL()+"/v2/"+repoA+"/blobs/"+layerA); code != http.StatusAccepted {
		t.Fatalf("DELETE %s blob %s upstream: status %d, want 202", repoA, layerA, code)
	}
	if code := upstreamStatus(t, http.MethodHead, up.URL()+"/v2/"+repoA+"/blobs/"+layerA); code != http.StatusNotFound {
		t.Fatalf("HEAD %s blob %s upstream after DELETE: status %d, want 404", repoA, layerA, code)
	}
	// B: a platform layer's content gone here only; its link stays.
	layerB := amdB.Layers[1]
	removeExisting(t, blobFile(rw.DataDir, layerB))
	if code := upstreamStatus(t, http.MethodHead, up.URL()+"/v2/"+repoB+"/blobs/"+layerB); code != http.StatusOK {
		t.Fatalf("HEAD %s blob %s upstream: status %d, want 200", repoB, layerB, code)
	}

	wantA := jobProblem{Registry: "hub", Repository: repoA, Manifest: amdA.Digest, Tags: []string{"amd64", "v1-amd64"},
		Missing: layerA, MediaType: harness.MediaTypeLayer, Connector: "up", Reason: "missing-local-and-upstream"}
	// Per repository: an index with 2 children, 2 images with a config
	// and 3 layers each: 10 references.
	wantSummary := jobSummary{Registries: 1, Manifests: 6, References: 20, Local: 18, RemoteOnly: 1, Problems: 1,
		ByRegistry: map[string]int{"hub": 1}}
	checkScan := func(what string, rep jobReport, sum jobSummary) {
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
	for _, job := range []string{"dangling_scan", "verify", "refresh"} {
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
	nc := natsConn(t, ns.URL())
	reports := watchReports(t, nc)
	syncs := watchEvents(t, ns.URL())
	start := time.Now()
	ev := requestJob(t, nc, "dangling_scan", time.Minute)
	repairSummary := wantSummary
	repairSummary.RepairsQueued = 1
	if ev.Job != "dangling_scan" || !ev.ok() || ev.Problems != 1 || ev.Worker == "" || ev.Started.IsZero() ||
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
	pub := reports.wait(t, 10*time.Second, "the on-demand scan's event on "+reportSubject, func(e reportEvent) bool {
		return e.Job == "dangling_scan"
	})
	if !pub.Started.Equal(ev.Started) || pub.Path != ev.Path {
		t.Errorf("published event %+v differs from the reply %+v", pub, ev)
	}
	done := syncs.wait(t, 30*time.Second, "the repair's sync of B's manifest", func(e syncEvent) bool {
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
	for _, e := range syncs.all() {
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
	if vev.Job != "verify" || !vev.ok() || vev.Problems != 1 || vev.Summary.Absent != 1 || vev.Summary.Corrupt != 0 ||
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
	wantAbsent := jobProblem{Registry: "hub", Repository: repoA, Manifest: amdA.Digest, Missing: layerA,
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
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1103})
	const repo = "e2e/verify"
	pushImage(t, im, up.Addr+"/"+repo+":v1")
	rw := harness.StartRegwarm(t, "serve", hubConfig(up.URL(), 5*time.Minute))
	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+t.TempDir()+":v1")
	if m := missingBlobs(rw.DataDir, im.AllBlobs()); len(m) > 0 {
		t.Fatalf("after the pull, blobs missing from the store: %v", m)
	}
	quarantine := filepath.Join(rw.DataDir, "store", "quarantine")
	out := filepath.Join(t.TempDir(), "verify.json")

	verify := func(what, layer, platformManifest string, size int64) jobProblem {
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
	if got, n, err := getBlobHTTP(rw.URL(), "hub/"+repo, x); err != nil || got != x || n != sizeX {
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
	if got, n, err := getBlobHTTP(rw.URL(), "hub/"+repo, y); err != nil || got != y || n != sizeY {
		t.Errorf("GET %s through serve after the quarantine: %s, %d bytes, %v; want the re-fetched blob", y, got, n, err)
	}
	if got, err := fileDigest(blobFile(rw.DataDir, y)); err != nil || got != y {
		t.Errorf("after the pull the blob file of %s hashes to %s (%v)", y, got, err)
	}

	// Repaired, plus a stored blob no manifest references: garbage is
	// listed with its size but is no problem, so verify exits 0.
	junk := randomBytes(1106, 1000)
	junkDigest := harness.Digest(junk)
	if err := os.MkdirAll(filepath.Dir(blobFile(rw.DataDir, junkDigest)), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, blobFile(rw.DataDir, junkDigest), string(junk))
	res := runRegwarmCLI(t, "verify", "--config", rw.ConfigPath, "--format", "json", "--output", out)
	res.wantCode(t, 0)
	rep, raw := readReport(t, out)
	t.Logf("repaired: verify report:\n%s", raw)
	want := jobSummary{Registries: 1, Manifests: 3, ByRegistry: map[string]int{"hub": 0}, Blobs: len(im.AllBlobs()) + 1,
		Bytes: rep.Summary.Bytes, Unreferenced: 1, UnreferencedBytes: int64(len(junk))}
	wantProblems := []jobProblem{{Reason: "unreferenced", Digest: junkDigest, Size: int64(len(junk))}}
	if !reflect.DeepEqual(rep.Summary, want) || !reflect.DeepEqual(rep.Problems, wantProblems) {
		t.Errorf("repaired: summary %+v, problems %+v\nwant %+v, %+v", rep.Summary, rep.Problems, want, wantProblems)
	}
}

// TestScanVerifyExitCodes checks the exit codes of the one-shot commands
// without a store to scan: 2 without --config, with a config file that
// does not exist, with an invalid config and with a bad --format; 0 for a
// clean (empty) store.
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
			{"no --config", nil, 2, "--config"},
			{"missing file", []string{"--config", filepath.Join(dir, "absent.yaml")}, 2, "absent.yaml"},
			{"invalid config", []string{"--config", invalid}, 2, "bogus_key"},
			{"bad format", []string{"--config", valid, "--format", "xml"}, 2, "format"},
			{"clean store", []string{"--config", valid, "--format", "json"}, 0, ""},
		} {
			res := runRegwarmCLI(t, append([]string{cmd}, tc.args...)...)
			if res.code != tc.code || !strings.Contains(res.stderr, tc.want) {
				t.Errorf("regwarm %s (%s): exit %d, want %d with %q in stderr\nstderr:\n%s",
					cmd, tc.name, res.code, tc.code, tc.want, lastLines(res.stderr, 10))
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

// writeFile writes a test input file.
func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
