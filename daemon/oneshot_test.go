package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regwarm/regwarm/jobs"
)

// TestOneShotGCTakesClusterLease: `regwarm gc` (RunJob) holds the job's
// cluster lease while it runs, waits while a worker's run holds it, and
// runs without it (saying so) when NATS does not answer.
func TestOneShotGCTakesClusterLease(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, "")
	e.cfg.DataDir = t.TempDir()
	e.cfg.NATS.URL = e.ns.ClientURL()
	ctx := context.Background()
	leases := e.bus.leaseService()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	held := false
	rep, err := withClusterLease(ctx, e.cfg, jobs.JobGC, log, func(ctx context.Context) (*jobs.Report, error) {
		var err error
		held, err = leases.Held(ctx, jobLeaseKey(jobs.JobGC))
		return &jobs.Report{Job: jobs.JobGC}, err
	})
	if err != nil || rep == nil || !held {
		t.Fatalf("run with NATS: report %v, error %v, lease held during the run %v", rep, err, held)
	}
	if h, err := leases.Held(ctx, jobLeaseKey(jobs.JobGC)); err != nil || h {
		t.Fatalf("lease after the run: held %v, %v", h, err)
	}

	// A worker's run holds the lease: the one-shot run waits for it.
	release, ok, err := e.bus.Acquire(ctx, jobLeaseKey(jobs.JobGC))
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	var started atomic.Bool
	done := make(chan error, 1)
	go func() {
		_, err := withClusterLease(ctx, e.cfg, jobs.JobGC, log, func(ctx context.Context) (*jobs.Report, error) {
			started.Store(true)
			return &jobs.Report{Job: jobs.JobGC}, nil
		})
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	if started.Load() {
		t.Fatal("the one-shot run started while a worker's run held the lease")
	}
	release()
	select {
	case err := <-done:
		if err != nil || !started.Load() {
			t.Fatalf("one-shot run after the worker's: started %v, %v", started.Load(), err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the one-shot run did not start once the lease was released")
	}
	// And it gives up when its ctx ends while it waits.
	release, ok, err = e.bus.Acquire(ctx, jobLeaseKey(jobs.JobGC))
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = RunJob(cctx, e.cfg, jobs.JobGC, log)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RunJob interrupted while waiting: %v", err)
	}
	release()
	if rep, err := RunJob(ctx, e.cfg, jobs.JobGC, log); err != nil || rep.Job != jobs.JobGC {
		t.Fatalf("RunJob: %v, %v", rep, err)
	}

	// No NATS: the run goes ahead alone and logs it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.NATS.URL = "nats://" + l.Addr().String()
	_ = l.Close() // nothing listens there now
	logs.Reset()
	if rep, err := RunJob(ctx, e.cfg, jobs.JobGC, log); err != nil || rep.Job != jobs.JobGC {
		t.Fatalf("RunJob without NATS: %v, %v", rep, err)
	}
	if !strings.Contains(logs.String(), "running without the cluster lease") {
		t.Errorf("no log line about running without the lease:\n%s", logs.String())
	}
}
