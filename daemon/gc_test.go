package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// TestGCJobAndEarlyRun runs the gc job through the scheduler: its report
// is saved as gc-latest.json, its event has the gc summary, its removals
// are counted in the metrics; an early run for a registry over budget
// runs once per bucket and not again for a registry it left at its floor.
func TestGCJobAndEarlyRun(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.cfg.DataDir = t.TempDir()
	e.cfg.Jobs.GC.Delay = 0
	garbage := []byte("nobody references this")
	if err := e.store.PutBlob(context.Background(), store.Repo{Registry: "local", Name: "app"}, digest.FromBytes(garbage), int64(len(garbage)), bytes.NewReader(garbage)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // older than the (zero) delay
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{Registries: []string{"hub", "local"}})
	var runs atomic.Int32
	gc := func(ctx context.Context) (*jobs.Report, error) {
		runs.Add(1)
		return runGC(ctx, e.cfg, e.store, slog.New(slog.DiscardHandler))
	}
	s := &scheduler{specs: schedules(e.cfg), reports: e.cfg.ReportsDir(), bus: e.bus, log: slog.New(slog.DiscardHandler), metrics: m, now: time.Now,
		running: map[string]bool{}, jobs: map[string]JobFunc{jobs.JobGC: gc}}

	// A request for a dry run lists and removes nothing.
	s.dryRuns = map[string]JobFunc{jobs.JobGC: func(ctx context.Context) (*jobs.Report, error) {
		return runGC(ctx, e.cfg, e.store, slog.New(slog.DiscardHandler), jobs.WithGCDryRun(true))
	}}
	stop, err := s.serveRequests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := e.bus.nc.Flush(); err != nil { // the subscription reached the server
		t.Fatal(err)
	}
	reply, err := e.nc.Request(e.bus.subj.JobRun(jobs.JobGC), []byte(`{"dry_run": true}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var dry struct {
		DryRun  bool `json:"dry_run"`
		Summary struct {
			Blobs int `json:"blobs_removed"`
		} `json:"summary"`
	}
	if err := json.Unmarshal(reply.Data, &dry); err != nil || !dry.DryRun || dry.Summary.Blobs != 1 {
		t.Fatalf("dry-run request: %s", reply.Data)
	}
	if _, err := e.store.HasBlob(context.Background(), digest.FromBytes(garbage)); err != nil {
		t.Fatalf("the dry run removed the blob: %v", err)
	}

	ev := s.run(context.Background(), jobs.JobGC, true)
	if ev.Error != "" || ev.GC == nil || ev.GC.BlobsRemoved != 1 || ev.GC.LinksRemoved != 1 {
		t.Fatalf("gc run: %+v (summary %+v)", ev, ev.GC)
	}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var wire struct {
		Job     string         `json:"job"`
		DryRun  *bool          `json:"dry_run"`
		Summary map[string]any `json:"summary"`
	}
	if err := json.Unmarshal(data, &wire); err != nil || wire.Job != "gc" || wire.DryRun == nil || wire.Summary["blobs_removed"] != 1.0 {
		t.Errorf("event JSON %s", data)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.ReportsDir(), "gc-latest.json")); err != nil {
		t.Errorf("gc-latest.json: %v", err)
	}
	if got := testutil.ToFloat64(m.GCRemoved.WithLabelValues("local", "blob", "unreferenced")); got != 1 {
		t.Errorf(`regwarm_gc_removed_total{registry="local",kind="blob",reason="unreferenced"} = %v`, got)
	}
	if got := testutil.ToFloat64(m.GCFreed); got != float64(len(garbage)) {
		t.Errorf("regwarm_gc_freed_bytes_total = %v, want %d", got, len(garbage))
	}

	// Early runs: one per bucket across the cluster.
	early := &earlyGC{sch: s}
	waitRuns := func(want int32) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for (runs.Load() != want || early.running.Load()) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runs.Load(); n != want {
			t.Fatalf("%d gc runs, want %d", n, want)
		}
	}
	early.overBudget(context.Background(), "hub", 10, 100) // under budget
	early.overBudget(context.Background(), "hub", 200, 100)
	waitRuns(2)
	if got := testutil.ToFloat64(m.GCEarlyRuns.WithLabelValues("budget")); got != 1 {
		t.Errorf(`regwarm_gc_early_runs_total{trigger="budget"} = %v`, got)
	}
	early.overBudget(context.Background(), "hub", 300, 100) // same bucket
	early.lowDisk(context.Background())
	time.Sleep(200 * time.Millisecond)
	waitRuns(2)
}
