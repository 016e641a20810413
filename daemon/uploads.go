package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// uploadJanitor discards upload sessions idle for longer than expiry: once
// at start (sessions left by an earlier process) and then every interval
// until ctx ends.
type uploadJanitor struct {
	store   store.Uploads
	expiry  time.Duration
	now     func() time.Time
	log     *slog.Logger
	metrics *metrics.Set
}

// janitorInterval is how often the janitor runs for an expiry: a tenth of
// it, between one second and ten minutes.
func janitorInterval(expiry time.Duration) time.Duration {
	return min(max(expiry/10, time.Second), 10*time.Minute)
}

// Run expires idle sessions now and every janitorInterval until ctx ends.
func (j *uploadJanitor) Run(ctx context.Context) error {
	t := time.NewTicker(janitorInterval(j.expiry))
	defer t.Stop()
	for {
		j.once(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (j *uploadJanitor) once(ctx context.Context) {
	n, err := j.store.ExpireUploads(ctx, j.now().Add(-j.expiry))
	if n > 0 {
		j.metrics.UploadsExpired.Add(float64(n))
		j.log.Info("upload sessions expired", "count", n, "expiry", j.expiry)
	}
	if err != nil && ctx.Err() == nil {
		j.log.Warn("expiring upload sessions failed", "error", err)
	}
}
