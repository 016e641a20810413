package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/jobs"
)

// ErrJobRunning: a one-shot run found the job's cluster lease held by a
// run elsewhere (a worker's scheduled or requested run, or another
// one-shot).
var ErrJobRunning = errors.New("a run of this job is going on in the cluster")

// jobLeaseKey is the lease a run of job holds cluster-wide (the
// scheduler's too).
func jobLeaseKey(job string) string { return "job." + job + ".running" }

// withClusterLease runs fn holding job's cluster lease when the
// deployment's NATS (nats.url, or the embedded server's address) answers,
// so that it never overlaps a worker's run; it fails with ErrJobRunning
// while another run holds the lease. Without a reachable NATS, or when the
// lease cannot be taken for another reason, fn runs alone and that is
// logged.
func withClusterLease(ctx context.Context, cfg *config.Config, job string, log *slog.Logger, fn JobFunc) (*jobs.Report, error) {
	url := NATSURL(cfg, "")
	nc, js, _, err := Client(ctx, cfg, url, "regwarm "+job)
	if err != nil {
		log.Info("nats unreachable: running without the cluster lease", "job", job, "server", events.RedactURL(url), "error", err)
		return fn(ctx)
	}
	defer nc.Close()
	kv, err := js.KeyValue(ctx, natsSetup(cfg).Subjects.LeaseBucket())
	if err != nil {
		log.Warn("job lease unavailable; running anyway", "job", job, "error", err)
		return fn(ctx)
	}
	host, _ := os.Hostname()
	leases := events.NewLeases(kv, fmt.Sprintf("cli/%s/%d", host, os.Getpid()))
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	release, ok, err := leases.Acquire(lctx, jobLeaseKey(job))
	cancel()
	switch {
	case err != nil:
		log.Warn("job lease unavailable; running anyway", "job", job, "error", err)
		return fn(ctx)
	case !ok:
		return nil, fmt.Errorf("%w (lease %s in %s): try again when it is done", ErrJobRunning, jobLeaseKey(job), events.RedactURL(url))
	}
	defer release()
	log.Info("cluster lease taken", "job", job, "server", events.RedactURL(url))
	return fn(ctx)
}
