package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/jobs"
)

// RunJob runs job (a scan or verification) once in this process, against
// the store and connectors of cfg, without NATS, and returns its report.
func RunJob(ctx context.Context, cfg *config.Config, job string, log *slog.Logger) (*jobs.Report, error) {
	st, err := openStore(cfg)
	if err != nil {
		return nil, err
	}
	m := metrics.New(prometheus.NewRegistry(), labels(cfg))
	c, err := cache.New(cfg, st, []connector.UpstreamOption{connector.WithMetrics(m), connector.WithLogger(log)},
		cache.WithLogger(log), cache.WithMetrics(m))
	if err != nil {
		return nil, err
	}
	fn := jobFuncs(cfg, st, c, jobs.NewSyncer(cfg, c), log, nil)[job]
	if fn == nil {
		return nil, fmt.Errorf("unknown job %q", job)
	}
	return fn(ctx)
}
