package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// contractMetrics are the names CONTRACT.md's Metrics section promises;
// histograms are checked through their _bucket, _sum and _count series.
var contractMetrics = []string{
	"regwarm_http_requests_total",
	"regwarm_http_request_duration_seconds_bucket",
	"regwarm_http_request_duration_seconds_sum",
	"regwarm_http_request_duration_seconds_count",
	"regwarm_cache_requests_total",
	"regwarm_upstream_requests_total",
	"regwarm_upstream_bytes_total",
	"regwarm_coalesced_requests_total",
	"regwarm_events_published_total",
	"regwarm_sync_jobs_total",
	"regwarm_sync_duration_seconds_bucket",
	"regwarm_sync_duration_seconds_sum",
	"regwarm_sync_duration_seconds_count",
	"regwarm_sync_bytes_total",
	"regwarm_work_pending_messages",
	"regwarm_job_runs_total",
	"regwarm_job_last_success_timestamp_seconds",
	"regwarm_dangling_references",
	"regwarm_store_blobs",
	"regwarm_store_bytes",
	"regwarm_registry_bytes",
}

// unboundedLabels would give a series per image; no regwarm metric may
// carry them.
var unboundedLabels = []string{"repository", "repo", "tag", "digest", "image", "reference"}

// promNames returns the regwarm_* metric names Prometheus holds now.
func promNames(p *harness.Prometheus) (map[string]bool, error) {
	res, err := p.Query(`count by (__name__) ({__name__=~"regwarm_.+"})`)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, s := range res {
		names[s.Metric["__name__"]] = true
	}
	return names, nil
}

// missingNames returns the names of want that are not in have.
func missingNames(have map[string]bool, want []string) []string {
	var out []string
	for _, n := range want {
		if !have[n] {
			out = append(out, n)
		}
	}
	return out
}

// TestPrometheusScrapesRegwarm runs Debian's prometheus against `regwarm
// run`: the config passes promtool, the target is up, every metric of the
// contract arrives (all but the upstream counter, whose status-code label
// cannot be known in advance, before any pull), a cold and a warm pull
// show up as cache misses and hits with the values regwarm itself
// reports, no regwarm series carries a per-image label, and the job label
// of regwarm_job_* arrives as exported_job.
func TestPrometheusScrapesRegwarm(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/prom"
	layer := harness.RandomBytes(1201, 64<<10)
	pushManifestHTTP(t, up.URL(), repo, "v1", pushBlobHTTP(t, up.URL(), repo, layer), int64(len(layer)))
	rw := harness.StartRegwarm(t, "run", hubConfig(up.URL(), 5*time.Minute))
	prom := harness.StartPrometheus(t, harness.PrometheusConfig(time.Second, map[string][]string{"regwarm": {rw.MetricsAddr}}))

	harness.Eventually(t, 20*time.Second, "prometheus reports the regwarm target up", func() error {
		targets, err := prom.Targets()
		if err != nil {
			return err
		}
		for _, tg := range targets {
			if tg.Labels["job"] == "regwarm" {
				if tg.Health != "up" {
					return fmt.Errorf("target %s: health %q, last error %q", tg.ScrapeURL, tg.Health, tg.LastError)
				}
				return nil
			}
		}
		return fmt.Errorf("no regwarm target among %d", len(targets))
	})
	if v, err := prom.QueryValue(`up{job="regwarm"}`); err != nil || v != 1 {
		t.Fatalf(`up{job="regwarm"} = %v (%v), want 1`, v, err)
	}

	// Before any pull: everything with label values known in advance.
	names, err := promNames(prom)
	if err != nil {
		t.Fatal(err)
	}
	startup := slices.DeleteFunc(slices.Clone(contractMetrics), func(n string) bool { return n == "regwarm_upstream_requests_total" })
	if m := missingNames(names, startup); len(m) > 0 {
		t.Errorf("before any pull, prometheus lacks %v (the contract exports them from start-up)", m)
	}
	sumBy := func(result string) (float64, error) {
		return prom.QueryValue(fmt.Sprintf(`sum(regwarm_cache_requests_total{job="regwarm",result=%q})`, result))
	}
	miss0, err := sumBy("miss")
	if err != nil {
		t.Fatal(err)
	}
	hit0, err := sumBy("hit")
	if err != nil {
		t.Fatal(err)
	}

	// A cold pull (misses, filled from the upstream), then a warm one (hits).
	ref := rw.Addr + "/hub/" + repo + ":v1"
	harness.Crane(t, "pull", "--insecure", "--format=oci", ref, t.TempDir())
	harness.Crane(t, "pull", "--insecure", "--format=oci", ref, t.TempDir())
	direct := harness.ScrapeMetrics(t, rw.MetricsAddr)
	wantMiss := direct.Value("regwarm_cache_requests_total", "result", "miss")
	wantHit := direct.Value("regwarm_cache_requests_total", "result", "hit")
	if wantMiss <= miss0 || wantHit <= hit0 {
		t.Fatalf("regwarm's own /metrics after two pulls: miss %v (was %v), hit %v (was %v); want both to grow",
			wantMiss, miss0, wantHit, hit0)
	}
	var miss, hit float64
	harness.Eventually(t, 15*time.Second, "prometheus scrapes the pulls' misses and hits", func() error {
		if miss, err = sumBy("miss"); err != nil {
			return err
		}
		if hit, err = sumBy("hit"); err != nil {
			return err
		}
		if miss < wantMiss || hit < wantHit {
			return fmt.Errorf("miss %v, hit %v; regwarm reported miss %v, hit %v", miss, hit, wantMiss, wantHit)
		}
		return nil
	})
	t.Logf("prometheus: cache misses %v -> %v, hits %v -> %v", miss0, miss, hit0, hit)

	names, err = promNames(prom)
	if err != nil {
		t.Fatal(err)
	}
	if m := missingNames(names, contractMetrics); len(m) > 0 {
		t.Errorf("after the pulls, prometheus lacks %v", m)
	}
	labels, err := prom.LabelNames(`{__name__=~"regwarm_.+"}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range labels {
		if slices.Contains(unboundedLabels, l) {
			t.Errorf("a regwarm_* series has the per-image label %q (labels: %s)", l, strings.Join(labels, ", "))
		}
	}
	t.Logf("prometheus: %d regwarm metric names, labels %v", len(names), labels)
	// Prometheus keeps the target's job label and stores the scraped "job"
	// label of regwarm_job_* as exported_job, which deploy/prometheus's
	// rules rely on.
	res, err := prom.Query(`count by (exported_job) (regwarm_job_last_success_timestamp_seconds{job="regwarm"})`)
	if err != nil {
		t.Fatal(err)
	}
	var jobs []string
	for _, s := range res {
		jobs = append(jobs, s.Metric["exported_job"])
	}
	slices.Sort(jobs)
	if want := []string{"dangling_scan", "gc", "refresh", "verify"}; !slices.Equal(jobs, want) {
		t.Errorf("regwarm_job_last_success_timestamp_seconds by exported_job: %v, want %v", jobs, want)
	}
}
