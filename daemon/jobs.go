package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// jobFuncs builds the scheduled jobs over a store and cache (refresh syncs
// with syncer). repair, when not nil, queues a sync for what the dangling
// scan finds fixable.
func jobFuncs(cfg *config.Config, st store.Store, c *cache.Cache, syncer *jobs.Syncer, log *slog.Logger, repair func(context.Context, string) error) map[string]JobFunc {
	return map[string]JobFunc{
		jobs.JobDanglingScan: func(ctx context.Context) (*jobs.Report, error) {
			ctx = cache.Background(ctx)
			var opts []jobs.ScanOption
			if cfg.Jobs.DanglingScan.Repair && repair != nil {
				opts = append(opts, jobs.WithRepair(repair))
			}
			return jobs.NewScanner(cfg, st, c.Source, log, opts...).Run(ctx)
		},
		jobs.JobVerify: func(ctx context.Context) (*jobs.Report, error) {
			ctx = cache.Background(ctx)
			fetch := func(ctx context.Context, repo store.Repo, d digest.Digest) error {
				_, _, err := c.Fetch(ctx, repo, d)
				return err
			}
			fetchManifest := func(ctx context.Context, repo store.Repo, d digest.Digest) error {
				_, err := c.Manifest(ctx, repo, d)
				return err
			}
			return jobs.NewVerifier(cfg, st, fetch, log, jobs.WithManifestFetch(fetchManifest),
				jobs.WithUpstreamCheck(jobs.ConnectorCheck(cfg, c.Source))).Run(ctx)
		},
		jobs.JobRefresh: func(ctx context.Context) (*jobs.Report, error) {
			return jobs.NewRefresher(syncer, cfg.Jobs.Refresh.Images, log).Run(ctx)
		},
	}
}

// OneShot runs a scan or verification in this process, against the store
// and connectors of cfg, and writes the report to output ("" for stdout)
// as text or JSON. It returns 0 clean, 1 problems found, 2 error.
func OneShot(ctx context.Context, cfg *config.Config, job, format, output string, stdout, stderr io.Writer, log *slog.Logger) int {
	if format != "text" && format != "json" {
		fmt.Fprintf(stderr, "regwarm %s: --format must be text or json\n", job)
		return ExitError
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm %s: %v\n", job, err)
		return ExitError
	}
	m := metrics.New(prometheus.NewRegistry(), labels(cfg))
	c, err := cache.New(cfg, st, []connector.UpstreamOption{connector.WithMetrics(m), connector.WithLogger(log)},
		cache.WithLogger(log), cache.WithMetrics(m))
	if err != nil {
		fmt.Fprintf(stderr, "regwarm %s: %v\n", job, err)
		return ExitError
	}
	fn := jobFuncs(cfg, st, c, jobs.NewSyncer(cfg, c), log, nil)[job]
	if fn == nil {
		fmt.Fprintf(stderr, "regwarm: unknown job %q\n", job)
		return ExitError
	}
	rep, err := fn(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm %s: %v\n", job, err)
		return ExitError
	}
	w := stdout
	if output != "" {
		f, err := os.Create(output)
		if err != nil {
			fmt.Fprintf(stderr, "regwarm %s: %v\n", job, err)
			return ExitError
		}
		defer f.Close()
		w = f
	}
	if format == "json" {
		err = rep.WriteJSON(w)
	} else {
		err = rep.WriteText(w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "regwarm %s: writing report: %v\n", job, err)
		return ExitError
	}
	if !rep.Clean() {
		return ExitProblems
	}
	return ExitOK
}
