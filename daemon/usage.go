package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// Usage prints `regwarm usage`: bytes per registry and repository, tags
// and last pull, of every registry or the one named. It returns the exit
// code: 0, or ExitError.
func Usage(ctx context.Context, cfg *config.Config, registry, format string, stdout, stderr io.Writer) int {
	if format != "text" && format != "json" {
		fmt.Fprintln(stderr, "regwarm usage: --format must be text or json")
		return ExitError
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm usage: %v\n", err)
		return ExitError
	}
	rep, err := jobs.Usage(ctx, cfg, st, registry)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm usage: %v\n", err)
		return ExitError
	}
	if format == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "regwarm usage: %v\n", err)
		return ExitError
	}
	return 0
}

// registryStats keeps regwarm_registry_bytes current by taking each
// registry's inventory now and then (workers only: serve stays lean).
func registryStats(ctx context.Context, cfg *config.Config, st store.Store, m *metrics.Set, log *slog.Logger, every time.Duration) {
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
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
