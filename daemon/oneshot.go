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

// jobLeaseKey is the lease a run of job holds cluster-wide (the
// scheduler's too).
func jobLeaseKey(job string) string { return "job." + job + ".running" }

// withClusterLease runs fn holding job's cluster lease when the
// deployment's NATS (nats.url, or the embedded server's address) answers,
// so that it never overlaps a worker's run: while another run holds the
// lease it waits (logged) until that run is done or ctx ends. Without a
// reachable NATS, or when the lease cannot be taken for another reason, fn
// runs alone and that is logged.
func withClusterLease(ctx context.Context, cfg *config.Config, job string, log *slog.Logger, fn JobFunc) (*jobs.Report, error) {
	url := NATSURL(cfg, "")
	nc, js, _, err := Client(ctx, cfg, url, "regwarm "+job)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Info("nats unreachable: running without the cluster lease", "job", job, "server", events.RedactURL(url), "error", err)
		return fn(ctx)
	}
	defer nc.Close()
	kv, err := js.KeyValue(ctx, natsSetup(cfg).Subjects.LeaseBucket())
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("job lease unavailable; running anyway", "job", job, "error", err)
		return fn(ctx)
	}
	host, _ := os.Hostname()
	leases := events.NewLeases(kv, fmt.Sprintf("cli/%s/%d", host, os.Getpid()))
	key := jobLeaseKey(job)
	for waited := false; ; {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		release, ok, err := leases.Acquire(lctx, key)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			log.Warn("job lease unavailable; running anyway", "job", job, "error", err)
			return fn(ctx)
		}
		if ok {
			defer release()
			log.Info("cluster lease taken", "job", job, "server", events.RedactURL(url))
			return fn(ctx)
		}
		if !waited {
			log.Info("waiting for the run elsewhere to finish", "job", job)
			waited = true
		}
		// A holder that died is not announced: look again after a TTL.
		wctx, cancel := context.WithTimeout(ctx, events.LeaseTTL)
		err = leases.Released(wctx, key)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.Warn("job lease unavailable; running anyway", "job", job, "error", err)
			return fn(ctx)
		}
	}
}
