package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/robfig/cron/v3"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/jobs"
)

// JobFunc runs one scheduled job and returns its report.
type JobFunc func(ctx context.Context) (*jobs.Report, error)

// ReportEvent is published on <prefix>.events.report after a job run and
// answers on-demand job requests.
type ReportEvent struct {
	Job      string       `json:"job"`
	Started  time.Time    `json:"started"`
	Finished time.Time    `json:"finished"`
	Summary  jobs.Summary `json:"summary"`
	Problems int          `json:"problems"`
	Path     string       `json:"path,omitempty"`
	Worker   string       `json:"worker,omitempty"`
	Error    string       `json:"error,omitempty"`
	Skipped  bool         `json:"skipped,omitempty"`
	// GC is a gc run's summary: the "summary" of its event (with
	// "dry_run") instead of Summary.
	GC     *jobs.GCSummary `json:"-"`
	DryRun bool            `json:"-"`
}

// MarshalJSON writes the event; a gc run's summary has the gc shape.
func (e ReportEvent) MarshalJSON() ([]byte, error) {
	type plain ReportEvent
	if e.GC == nil {
		return json.Marshal(plain(e))
	}
	return json.Marshal(struct {
		plain
		Summary *jobs.GCSummary `json:"summary"`
		DryRun  bool            `json:"dry_run"`
	}{plain(e), e.GC, e.DryRun})
}

// scheduler runs the cron jobs of a worker. Each tick runs on exactly one
// worker of the cluster (a claim in the lease bucket), never while another
// run of the same job is still going (a held lease), and SkipIfStillRunning
// within the process.
type scheduler struct {
	specs   map[string]string // job → schedule ("" = disabled), see schedules
	reports string            // where scans and verifications save reports
	bus     *bus
	jobs    map[string]JobFunc
	log     *slog.Logger
	metrics *metrics.Set
	owner   string
	// dryRuns are the jobs' dry-run variants (gc), run for a request
	// with {"dry_run": true}.
	dryRuns map[string]JobFunc
	now     func() time.Time
	mu      sync.Mutex // serialises runs of one job within the process
	running map[string]bool
}

// schedules returns the configured schedule of each job ("" = disabled).
// refresh without images has nothing to do and is not scheduled.
func schedules(cfg *config.Config) map[string]string {
	refresh := cfg.Jobs.Refresh.Schedule
	if len(cfg.Jobs.Refresh.Images) == 0 {
		refresh = ""
	}
	return map[string]string{
		jobs.JobDanglingScan: cfg.Jobs.DanglingScan.Schedule,
		jobs.JobVerify:       cfg.Jobs.Verify.Schedule,
		jobs.JobRefresh:      refresh,
		jobs.JobGC:           cfg.Jobs.GC.Schedule,
	}
}

// Run waits for NATS, runs the cron jobs and answers on-demand job
// requests until ctx ends, then waits for running jobs to end.
func (s *scheduler) Run(ctx context.Context) error {
	select {
	case <-s.bus.ready:
	case <-ctx.Done():
		return nil
	}
	stopCron, err := s.start(ctx)
	if err != nil {
		return err
	}
	defer stopCron()
	stopReqs, err := s.serveRequests(ctx)
	if err != nil {
		return err
	}
	defer stopReqs()
	<-ctx.Done()
	return nil
}

// start registers the schedules and starts cron; stop waits for running
// jobs to end.
func (s *scheduler) start(ctx context.Context) (stop func(), err error) {
	// Schedules come parsed (config.ParseSchedule): no cron parser here.
	c := cron.New(cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)), cron.WithLocation(time.UTC))
	for job, spec := range s.specs {
		if spec == "" || s.jobs[job] == nil {
			continue
		}
		sched, grain, err := config.ParseSchedule(spec)
		if err != nil {
			return nil, fmt.Errorf("jobs.%s.schedule: %w", job, err)
		}
		c.Schedule(sched, cron.FuncJob(func() { s.tick(ctx, job, grain) }))
		s.log.Info("job scheduled", "job", job, "schedule", spec, "next", sched.Next(time.Now()).UTC())
	}
	c.Start()
	return func() { <-c.Stop().Done() }, nil
}

// tick runs job if this worker wins the tick's claim.
func (s *scheduler) tick(ctx context.Context, job string, grain time.Duration) {
	if ctx.Err() != nil {
		return
	}
	leases := s.bus.leaseService()
	if leases == nil {
		s.log.Warn("job tick skipped: nats not ready", "job", job)
		s.metrics.JobRuns.WithLabelValues(job, metrics.ResultSkipped).Inc()
		return
	}
	// Ticks of one schedule fire at the same instant on every worker; that
	// instant, rounded to the schedule's grain, names the tick.
	tickKey := "job." + job + ".tick." + strconv.FormatInt(config.Nearest(s.now(), grain).Unix(), 10)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	won, err := leases.Claim(cctx, tickKey)
	cancel()
	if err != nil {
		s.log.Warn("job tick skipped: claim failed", "job", job, "error", err)
		s.metrics.JobRuns.WithLabelValues(job, metrics.ResultSkipped).Inc()
		return
	}
	if !won {
		return // another worker runs this tick
	}
	s.run(ctx, job, true)
}

// run runs job now, unless a run is still going in the cluster. It
// returns the event describing the outcome.
func (s *scheduler) run(ctx context.Context, job string, publish bool) ReportEvent {
	return s.runFunc(ctx, job, s.jobs[job], publish)
}

// runFunc is run with the job's function given (nil: unknown job).
func (s *scheduler) runFunc(ctx context.Context, job string, fn JobFunc, publish bool) ReportEvent {
	ev := ReportEvent{Job: job, Worker: s.owner, Started: s.now().UTC()}
	if fn == nil {
		ev.Error = "unknown job " + strconv.Quote(job)
		return ev
	}
	s.mu.Lock()
	if s.running[job] {
		s.mu.Unlock()
		ev.Skipped, ev.Error = true, "a run is still going on this worker"
		s.metrics.JobRuns.WithLabelValues(job, metrics.ResultSkipped).Inc()
		return ev
	}
	s.running[job] = true
	s.mu.Unlock()
	defer func() { s.mu.Lock(); delete(s.running, job); s.mu.Unlock() }()

	if leases := s.bus.leaseService(); leases != nil {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		release, ok, err := leases.Acquire(lctx, jobLeaseKey(job))
		cancel()
		switch {
		case err != nil:
			s.log.Warn("job lease unavailable; running anyway", "job", job, "error", err)
		case !ok:
			ev.Skipped, ev.Error = true, "a run is still going on another worker"
			s.metrics.JobRuns.WithLabelValues(job, metrics.ResultSkipped).Inc()
			s.log.Info("job skipped: still running elsewhere", "job", job)
			return ev
		default:
			defer release()
		}
	}
	s.log.Info("job started", "job", job)
	start := time.Now()
	rep, err := fn(ctx)
	if err == nil && (job == jobs.JobDanglingScan || job == jobs.JobVerify || job == jobs.JobGC) {
		err = rep.Save(s.reports)
	}
	s.metrics.JobDuration.WithLabelValues(job).Observe(time.Since(start).Seconds())
	ev.Finished = s.now().UTC()
	if err != nil {
		ev.Error = jobs.ErrorText(err)
		s.metrics.JobRuns.WithLabelValues(job, metrics.ResultError).Inc()
		s.log.Error("job failed", "job", job, "error", err)
	} else {
		ev.Summary, ev.Problems, ev.Path = rep.Summary, rep.Summary.Problems, rep.Path
		ev.GC, ev.DryRun = rep.GC, rep.DryRun
		recordGC(s.metrics, rep)
		s.metrics.JobRuns.WithLabelValues(job, metrics.ResultOK).Inc()
		s.metrics.JobLastSuccess.WithLabelValues(job).Set(float64(ev.Finished.Unix()))
		if job == jobs.JobDanglingScan {
			for reg, n := range rep.Summary.ByRegistry {
				s.metrics.DanglingReferences.WithLabelValues(reg).Set(float64(n))
			}
		}
		s.log.Info("job done", "job", job, "problems", ev.Problems, "report", ev.Path, "duration", time.Since(start).Round(time.Millisecond))
	}
	if publish {
		s.publish(ev)
	}
	return ev
}

func (s *scheduler) publish(ev ReportEvent) {
	data, err := json.Marshal(ev)
	if err != nil {
		return
	}
	if err := s.bus.nc.Publish(s.bus.subj.Report(), data); err != nil {
		s.log.Warn("publishing report event failed", "job", ev.Job, "error", err)
	}
}

// serveRequests answers on-demand job requests on <prefix>.jobs.run.<job>
// (one worker of the queue group takes each), replying with the outcome.
func (s *scheduler) serveRequests(ctx context.Context) (func(), error) {
	var subs []*nats.Subscription
	for job := range s.jobs {
		sub, err := s.bus.nc.QueueSubscribe(s.bus.subj.JobRun(job), "regwarm-workers", func(m *nats.Msg) {
			go func() {
				fn := s.jobs[job]
				if dry, ok := s.dryRuns[job]; ok && wantsDryRun(m.Data) {
					fn = dry
				}
				ev := s.runFunc(ctx, job, fn, true)
				data, _ := json.Marshal(ev)
				if m.Reply != "" {
					_ = m.Respond(data)
				}
			}()
		})
		if err != nil {
			for _, s := range subs {
				_ = s.Unsubscribe()
			}
			return nil, fmt.Errorf("subscribing to job requests: %w", err)
		}
		subs = append(subs, sub)
	}
	return func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}, nil
}

// wantsDryRun reports whether a job request's JSON body asks for a dry
// run ({"dry_run": true}); any other body does not.
func wantsDryRun(body []byte) bool {
	var req struct {
		DryRun bool `json:"dry_run"`
	}
	return json.Unmarshal(body, &req) == nil && req.DryRun
}
