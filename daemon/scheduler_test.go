package daemon

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/jobs"
)

// TestEachTickRunsOnce runs two workers' schedulers on one NATS, their
// clocks a little apart: every tick of a job runs on exactly one of them.
// The ticks are driven with an injected clock, not by waiting for cron.
func TestEachTickRunsOnce(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.cfg.DataDir = t.TempDir()
	_, grain, err := config.ParseSchedule("@every 1s")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	tick := 0
	runs := map[int]int{} // tick → runs
	job := func(ctx context.Context) (*jobs.Report, error) {
		mu.Lock()
		runs[tick]++
		mu.Unlock()
		now := time.Now()
		return &jobs.Report{Version: 1, Job: jobs.JobDanglingScan, Started: now, Finished: now}, nil
	}
	var scheds []*scheduler
	for _, b := range []*bus{e.bus, e.newBus("second")} {
		scheds = append(scheds, &scheduler{reports: e.cfg.ReportsDir(), bus: b, jobs: map[string]JobFunc{jobs.JobDanglingScan: job},
			log: slog.New(slog.DiscardHandler), metrics: metrics.New(prometheus.NewRegistry(), metrics.Labels{}), running: map[string]bool{}})
	}
	base := time.Now().Truncate(time.Second).Add(time.Hour)
	const ticks = 5
	for tick = range ticks {
		at := base.Add(time.Duration(tick) * grain)
		var wg sync.WaitGroup
		for i, s := range scheds {
			skew := time.Duration(2*i-1) * 100 * time.Millisecond // one clock early, one late
			s.now = func() time.Time { return at.Add(skew) }
			wg.Go(func() { s.tick(context.Background(), jobs.JobDanglingScan, grain) })
		}
		wg.Wait()
	}
	if len(runs) != ticks {
		t.Fatalf("%d of %d ticks ran", len(runs), ticks)
	}
	for tick, n := range runs {
		if n != 1 {
			t.Errorf("tick %d ran %d times", tick, n)
		}
	}
	if _, err := os.Stat(filepath.Join(e.cfg.ReportsDir(), "dangling_scan-latest.json")); err != nil {
		t.Errorf("no latest report: %v", err)
	}
}

func TestJobRunFailsCleanlyOnUnwritableReports(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.cfg.DataDir = t.TempDir()
	// reports is a file, so the directory cannot be created.
	if err := os.WriteFile(filepath.Join(e.cfg.DataDir, "reports"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	s := &scheduler{reports: e.cfg.ReportsDir(), bus: e.bus, log: slog.New(slog.DiscardHandler), metrics: m, now: time.Now, running: map[string]bool{},
		jobs: map[string]JobFunc{jobs.JobDanglingScan: func(context.Context) (*jobs.Report, error) {
			return &jobs.Report{Version: 1, Job: jobs.JobDanglingScan, Started: time.Now(), Finished: time.Now()}, nil
		}}}
	ev := s.run(context.Background(), jobs.JobDanglingScan, true)
	if ev.Error == "" {
		t.Fatal("run with an unwritable report directory succeeded")
	}
	if got := testutil.ToFloat64(m.JobRuns.WithLabelValues(jobs.JobDanglingScan, metrics.ResultError)); got != 1 {
		t.Fatalf("error runs %v", got)
	}
	if got := testutil.ToFloat64(m.JobLastSuccess.WithLabelValues(jobs.JobDanglingScan)); got != 0 {
		t.Fatalf("last success set on failure: %v", got)
	}
}

func TestJobSkippedWhileRunningElsewhere(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.cfg.DataDir = t.TempDir()
	started, release := make(chan struct{}), make(chan struct{})
	slow := func(context.Context) (*jobs.Report, error) {
		close(started)
		<-release
		return &jobs.Report{Version: 1, Job: jobs.JobRefresh, Started: time.Now(), Finished: time.Now()}, nil
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	mk := func(b *bus, fn JobFunc) *scheduler {
		return &scheduler{reports: e.cfg.ReportsDir(), bus: b, log: slog.New(slog.DiscardHandler), metrics: m, now: time.Now,
			running: map[string]bool{}, jobs: map[string]JobFunc{jobs.JobRefresh: fn}}
	}
	a := mk(e.bus, slow)
	b := mk(e.newBus("b"), func(context.Context) (*jobs.Report, error) {
		t.Error("ran while another run held the lease")
		return nil, nil
	})
	done := make(chan ReportEvent)
	go func() { done <- a.run(context.Background(), jobs.JobRefresh, false) }()
	<-started
	if ev := b.run(context.Background(), jobs.JobRefresh, false); !ev.Skipped {
		t.Fatalf("second run not skipped: %+v", ev)
	}
	close(release)
	if ev := <-done; ev.Error != "" {
		t.Fatal(ev.Error)
	}
}

// TestRefreshWithoutImagesNotScheduled: refresh with images: [] (the
// default) is neither scheduled nor logged as scheduled.
func TestRefreshWithoutImagesNotScheduled(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	if got := schedules(cfg)[jobs.JobRefresh]; got != "" {
		t.Errorf("refresh without images scheduled %q", got)
	}
	if got := schedules(cfg)[jobs.JobDanglingScan]; got == "" {
		t.Error("dangling_scan not scheduled by default")
	}
	cfg.Jobs.Refresh.Images = []string{"local/app:v*"}
	if got := schedules(cfg)[jobs.JobRefresh]; got != cfg.Jobs.Refresh.Schedule || got == "" {
		t.Errorf("refresh with images scheduled %q, want %q", got, cfg.Jobs.Refresh.Schedule)
	}
	var logs strings.Builder
	s := &scheduler{specs: schedules(config.Default()), jobs: map[string]JobFunc{jobs.JobRefresh: func(context.Context) (*jobs.Report, error) { return nil, nil }},
		log: slog.New(slog.NewTextHandler(&logs, nil)), metrics: metrics.New(prometheus.NewRegistry(), metrics.Labels{}),
		now: time.Now, running: map[string]bool{}}
	stop, err := s.start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if strings.Contains(logs.String(), "job scheduled") {
		t.Errorf("refresh without images logged as scheduled:\n%s", logs.String())
	}
}
