package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// registryStats keeps regwarm_registry_bytes current by taking each
// registry's inventory now and then (workers only: serve stays lean), and
// tells early (nil: nobody) about registries over budget and a disk below
// the gc watermark.
func registryStats(ctx context.Context, cfg *config.Config, st store.Store, m *metrics.Set, log *slog.Logger, every time.Duration, early *earlyGC) {
	for {
		for _, r := range cfg.Registries {
			inv, err := jobs.Inventory(ctx, st, r.Name)
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("measuring registry usage failed", "registry", r.Name, "error", err)
				}
				continue
			}
			m.RegistryBytes.WithLabelValues(r.Name).Set(float64(inv.Bytes))
			if r.Retention != nil {
				early.overBudget(ctx, r.Name, inv.Bytes, int64(r.Retention.MaxBytes))
			}
		}
		if w := int64(cfg.Jobs.GC.DiskWatermark); w > 0 {
			if free, err := freeBytes(cfg.StoreRoot()); err == nil && free < w {
				early.lowDisk(ctx)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// storeStatsEvery is how often workers count the store's blobs and bytes.
const storeStatsEvery = 5 * time.Minute

// storeStats keeps regwarm_store_blobs and regwarm_store_bytes current by
// walking the store now and then (workers only: serve stays lean).
func storeStats(ctx context.Context, st store.Store, m *metrics.Set, log *slog.Logger) {
	for {
		var n, size int64
		err := st.Blobs(ctx, func(_ digest.Digest, sz int64) error {
			n++
			size += sz
			return nil
		})
		if err == nil {
			m.StoreBlobs.Set(float64(n))
			m.StoreBytes.Set(float64(size))
		} else if ctx.Err() == nil {
			log.Warn("counting the store failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(storeStatsEvery):
		}
	}
}
