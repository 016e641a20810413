package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/e2e/harness"
)

// cronPeriod is the schedule of TestCronTicksOnceAcrossWorkers, and
// cronWindow how long it watches the ticks.
const (
	cronPeriod = 3 * time.Second
	cronWindow = 60 * time.Second
)

// TestCronTicksOnceAcrossWorkers runs two workers sharing a store with
// jobs.refresh.schedule "@every 3s" (refreshing the tags that match a
// glob) for a minute and watches regwarm.events.report: no tick runs
// twice, at least 80% of the elapsed ticks run, every run succeeds, and
// the workers' regwarm_job_runs_total{job="refresh",result="ok"} add up to
// the number of events.
func TestCronTicksOnceAcrossWorkers(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1104, Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 4 << 10})
	const repo = "e2e/cron"
	// Tags v1 and v2 match the refresh glob "v*", "other" does not.
	for _, tag := range []string{"v1", "v2", "other"} {
		pushImage(t, im, up.Addr+"/"+repo+":"+tag)
	}
	cfg := workerConfig(ns.URL(), up.URL()) + fmt.Sprintf(`jobs:
  dangling_scan: {schedule: ""}
  verify: {schedule: ""}
  refresh: {schedule: "@every %s", images: ["hub/%s:v*"]}
`, cronPeriod, repo)
	reports := watchReports(t, harness.NATSConn(t, ns.URL()))
	dataDir := filepath.Join(t.TempDir(), "data")
	ws := startWorkers(t, cfg, dataDir, 2)
	start := time.Now()
	time.Sleep(cronWindow)
	end := time.Now()

	// Settle between two ticks, then take the events and the metrics.
	var evs []daemon.ReportEvent
	var runs, errs, skips float64
	for attempt := 1; ; attempt++ {
		time.Sleep(time.Until(time.Now().Truncate(cronPeriod).Add(cronPeriod + cronPeriod/2)))
		evs = reports.All()
		runs, errs, skips = 0, 0, 0
		for _, w := range ws {
			m := harness.ScrapeMetrics(t, w.MetricsAddr)
			runs += m.Value("regwarm_job_runs_total", "job", "refresh", "result", "ok")
			errs += m.Value("regwarm_job_runs_total", "job", "refresh", "result", "error")
			skips += m.Value("regwarm_job_runs_total", "job", "refresh", "result", "skipped")
		}
		if (runs+errs+skips == float64(len(evs)) && len(reports.All()) == len(evs)) || attempt == 3 {
			break
		}
		t.Logf("attempt %d: %d events, metrics %v ok, %v error, %v skipped; sampling again", attempt, len(evs), runs, errs, skips)
	}

	perTick := map[int64][]daemon.ReportEvent{}
	perWorker := map[string]int{}
	ok := 0
	for _, e := range evs {
		if e.Job != "refresh" {
			t.Errorf("unexpected event for job %q (disabled): %+v", e.Job, e)
			continue
		}
		tick := e.Started.Round(cronPeriod).Unix()
		perTick[tick] = append(perTick[tick], e)
		perWorker[e.Worker]++
		if reportOK(e) {
			ok++
			if e.Summary.Manifests != 2 || e.Problems != 0 {
				t.Errorf("refresh run %+v: want 2 tags (v1, v2) checked and no problem", e)
			}
		} else {
			t.Errorf("refresh run failed or skipped: %+v", e)
		}
	}
	for tick, es := range perTick {
		if len(es) > 1 {
			t.Errorf("tick %s ran %d times: %+v", time.Unix(tick, 0).UTC().Format(time.TimeOnly), len(es), es)
		}
	}
	// Ticks that fell in the window, and those of them that ran.
	elapsed, ran := 0, 0
	var missed []string
	for tick := start.Truncate(cronPeriod).Add(cronPeriod); !tick.After(end); tick = tick.Add(cronPeriod) {
		elapsed++
		if len(perTick[tick.Unix()]) > 0 {
			ran++
		} else {
			missed = append(missed, tick.UTC().Format(time.TimeOnly))
		}
	}
	t.Logf("%d ticks elapsed in %s, %d ran (missed: %v); %d events in all, by worker %v; metrics: %v ok, %v error, %v skipped",
		elapsed, end.Sub(start).Round(time.Millisecond), ran, missed, len(evs), perWorker, runs, errs, skips)
	if need := int(math.Ceil(0.8 * float64(elapsed))); ran < need {
		t.Errorf("%d of %d elapsed ticks ran, want at least %d", ran, elapsed, need)
	}
	if runs != float64(ok) || errs != 0 || skips != 0 {
		t.Errorf(`workers' regwarm_job_runs_total{job="refresh"}: %v ok, %v error, %v skipped; want %d ok (one per event), no error or skip`,
			runs, errs, skips, ok)
	}
	if m := missingBlobs(dataDir, im.AllBlobs()); len(m) > 0 {
		t.Errorf("the refresh runs did not sync hub/%s:v*: blobs missing %v", repo, m)
	}
}

// jobConfigFile writes a config with one push registry, metrics on a free
// port, NATS at natsURL and the given jobs block, and returns its path.
func jobConfigFile(t *testing.T, dir, name, natsURL, jobs string) string {
	t.Helper()
	path := filepath.Join(dir, name+".yaml")
	writeFile(t, path, fmt.Sprintf(`version: 1
data_dir: %q
metrics: {listen: %q}
nats: {url: %q}
registries:
  - {name: local, default: true, push: true}
`, filepath.Join(dir, name+"-data"), harness.FreeAddr(t), natsURL)+jobs)
	return path
}

// TestJobScheduleInvalid: `regwarm config check` rejects a verify schedule
// with minute 61 (exit 2, naming jobs.verify.schedule), as do `worker` and
// `scan` with that config; the same config with "@every 3s" is valid.
func TestJobScheduleInvalid(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	dir := t.TempDir()
	noNATS := fmt.Sprintf("nats://127.0.0.1:%d", harness.FreePort(t))
	bad := jobConfigFile(t, dir, "bad", noNATS, strings.Replace(jobsOff, `verify: {schedule: ""}`, `verify: {schedule: "61 * * * *"}`, 1))
	res := runRegwarmCLI(t, "config", "check", "--config", bad)
	res.wantCode(t, 2)
	if !strings.Contains(res.stderr, "jobs.verify.schedule") || !strings.Contains(res.stderr, "61 * * * *") {
		t.Errorf("config check: stderr does not name jobs.verify.schedule and its value:\n%s", res.stderr)
	}
	if strings.Contains(res.stdout, "valid; effective config") {
		t.Errorf("config check of an invalid config printed it as valid:\n%s", res.stdout)
	}
	for _, args := range [][]string{{"worker", "--config", bad}, {"scan", "--config", bad}} {
		res := runRegwarmFor(t, 20*time.Second, args...)
		if res.code != 2 || !strings.Contains(res.stderr, "jobs.verify.schedule") {
			t.Errorf("regwarm %s: exit %d, want 2 naming jobs.verify.schedule\nstderr:\n%s", strings.Join(args, " "), res.code, harness.LastLines(res.stderr, 10))
		}
	}
	good := jobConfigFile(t, dir, "good", noNATS, strings.Replace(jobsOff, `verify: {schedule: ""}`, `verify: {schedule: "@every 3s"}`, 1))
	res = runRegwarmCLI(t, "config", "check", "--config", good)
	res.wantCode(t, 0)
	if !strings.Contains(res.stdout, "@every 3s") {
		t.Errorf("config check: the effective config does not show the schedule:\n%s", res.stdout)
	}
}

// TestJobScheduleSubsecond checks that `regwarm config check` and the
// worker agree on `@every` schedules under a second: a schedule that
// config check calls valid must not stop the worker, and one the worker
// refuses must fail config check with exit 2.
func TestJobScheduleSubsecond(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	dir := t.TempDir()
	for i, spec := range []string{"@every 500ms", "@every -5s"} {
		path := jobConfigFile(t, dir, fmt.Sprintf("sub%d", i), ns.URL(),
			strings.Replace(jobsOff, `dangling_scan: {schedule: ""`, fmt.Sprintf(`dangling_scan: {schedule: %q`, spec), 1))
		check := runRegwarmCLI(t, "config", "check", "--config", path)
		// A worker that has not stopped within 10s has accepted the schedule.
		worker := runRegwarmFor(t, 10*time.Second, "worker", "--config", path)
		checkOK, workerOK := check.code == 0, worker.code == timedOut
		if checkOK != workerOK {
			t.Errorf("jobs.dangling_scan.schedule %q: `regwarm config check` exits %d but `regwarm worker` %s.\n"+
				"BUG: internal/config/validate.go parseSchedule accepts it (cron.ParseStandard rounds a sub-second or negative @every up to 1s), "+
				"while daemon/scheduler.go parseSchedule refuses durations under 1s, so the worker dies after start-up; "+
				"config check must reject it (exit 2, naming jobs.dangling_scan.schedule) or the scheduler accept it.\nworker stderr:\n%s",
				spec, check.code, describeWorkerExit(worker), harness.LastLines(worker.stderr, 5))
		}
		if !checkOK && !strings.Contains(check.stderr, "jobs.dangling_scan.schedule") {
			t.Errorf("config check of %q: stderr does not name jobs.dangling_scan.schedule:\n%s", spec, check.stderr)
		}
	}
}

// describeWorkerExit says how a worker run by runRegwarmFor ended.
func describeWorkerExit(r cliResult) string {
	if r.code == timedOut {
		return "keeps running"
	}
	return fmt.Sprintf("exits %d at start-up", r.code)
}

// TestJobReportsUnwritable starts a worker whose <data_dir>/reports is a
// regular file, with a dangling scan every 2s: the scheduled scans fail
// with an error naming the reports directory, in the log, on
// regwarm.events.report and in regwarm_job_runs_total{result="error"};
// the worker stays healthy and still syncs an image afterwards. Once the
// file is gone, the next scheduled scan writes its report.
func TestJobReportsUnwritable(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/jobfail"
	im := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 1105, Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 16 << 10})
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	reportsPath := filepath.Join(dataDir, "reports")
	writeFile(t, reportsPath, "a file where the reports directory should be\n")
	cfg := workerConfig(ns.URL(), up.URL()) + strings.Replace(jobsOff, `dangling_scan: {schedule: ""`, `dangling_scan: {schedule: "@every 2s"`, 1)
	nc := harness.NATSConn(t, ns.URL())
	reports := watchReports(t, nc)
	syncs := watchEvents(t, ns.URL())
	w := harness.StartWorker(t, "worker-1", cfg, harness.ConfigVars{DataDir: dataDir})

	failed := reports.Wait(t, 15*time.Second, "a failed scheduled dangling scan", func(e daemon.ReportEvent) bool {
		return e.Job == "dangling_scan"
	})
	if failed.Error == "" || !strings.Contains(failed.Error, reportsPath) || failed.Path != "" || failed.Skipped {
		t.Errorf("scheduled scan event %+v; want an error naming %s and no report path", failed, reportsPath)
	}
	t.Logf("scheduled scan error: %s", failed.Error)
	harness.Eventually(t, 10*time.Second, "the failure in the worker's log", func() error {
		for _, l := range strings.Split(w.Log(), "\n") {
			if strings.Contains(l, "level=ERROR") && strings.Contains(l, "job=dangling_scan") && strings.Contains(l, reportsPath) {
				return nil
			}
		}
		return fmt.Errorf("no ERROR line with job=dangling_scan naming %s", reportsPath)
	})
	m := harness.ScrapeMetrics(t, w.MetricsAddr)
	errs := m.Value("regwarm_job_runs_total", "job", "dangling_scan", "result", "error")
	if errs < 1 || m.Value("regwarm_job_runs_total", "job", "dangling_scan", "result", "ok") != 0 {
		t.Errorf(`regwarm_job_runs_total{job="dangling_scan"}: %v error, %v ok; want errors only`,
			errs, m.Value("regwarm_job_runs_total", "job", "dangling_scan", "result", "ok"))
	}

	// The worker lives on: healthy, ready, syncing, and still ticking.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + w.MetricsAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s of the worker after failed scans: %d, want 200", path, resp.StatusCode)
		}
	}
	js := harness.JetStream(t, ns.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, syncSubject, []byte("hub/"+repo+":v1")); err != nil {
		t.Fatalf("publish sync: %v", err)
	}
	done := syncs.Wait(t, 30*time.Second, "the sync after the failed scans", func(e syncEvent) bool {
		return e.Image == "hub/"+repo+":v1"
	})
	if !done.done() || done.Digest != im.IndexDigest {
		t.Errorf("sync after failed scans: %v; want done with digest %s", done, im.IndexDigest)
	}
	if missing := missingBlobs(dataDir, im.AllBlobs()); len(missing) > 0 {
		t.Errorf("after the sync, blobs missing: %v", missing)
	}
	harness.Eventually(t, 10*time.Second, "another failed scheduled scan", func() error {
		if n := harness.ScrapeMetrics(t, w.MetricsAddr).Value("regwarm_job_runs_total", "job", "dangling_scan", "result", "error"); n <= errs {
			return fmt.Errorf("%v errors, had %v", n, errs)
		}
		return nil
	})
	if exited, err := w.Exited(); exited {
		t.Errorf("the worker exited: %v", err)
	}

	// Once the directory can be created, the next scheduled scan writes
	// its report.
	if err := os.Remove(reportsPath); err != nil {
		t.Fatal(err)
	}
	fixedAt := time.Now()
	saved := reports.Wait(t, 15*time.Second, "a successful scheduled scan", func(e daemon.ReportEvent) bool {
		return e.Job == "dangling_scan" && reportOK(e) && e.Started.After(fixedAt)
	})
	name := regexp.MustCompile(`^dangling_scan-\d{8}T\d{6}(\.\d{3})?Z\.json$`)
	if filepath.Dir(saved.Path) != reportsPath || !name.MatchString(filepath.Base(saved.Path)) {
		t.Errorf("scheduled scan event %+v: want a report path %s/dangling_scan-<UTC timestamp>.json", saved, reportsPath)
	} else {
		rep, _ := readReport(t, saved.Path)
		latest, _ := readReport(t, filepath.Join(reportsPath, "dangling_scan-latest.json"))
		// A later run may have replaced -latest.json meanwhile.
		if rep.Job != "dangling_scan" || rep.Summary.Manifests != 2 || rep.Summary.Problems != 0 || latest.Finished.Before(rep.Finished) {
			t.Errorf("scheduled report %+v (latest %+v): want 2 manifests, no problem", rep, latest)
		}
	}
	harness.Eventually(t, 5*time.Second, "the ok run in the metrics", func() error {
		m := harness.ScrapeMetrics(t, w.MetricsAddr)
		ok := m.Value("regwarm_job_runs_total", "job", "dangling_scan", "result", "ok")
		last := m.Value("regwarm_job_last_success_timestamp_seconds", "job", "dangling_scan")
		if ok < 1 || last < float64(fixedAt.Unix()) {
			return fmt.Errorf("%v ok runs, last success %v", ok, last)
		}
		return nil
	})

	for _, e := range reports.All() {
		if e.Job != "dangling_scan" {
			t.Errorf("report event for job %q, which is not scheduled: %+v", e.Job, e)
		}
	}
}
