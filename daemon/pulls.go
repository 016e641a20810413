package daemon

import (
	"log/slog"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/pull"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/registryapi"
)

// newPullRecorder returns the recorder of client pulls for the registry
// API, or nil when the store cannot keep last-pulled times.
func newPullRecorder(st store.Store, m *metrics.Set, log *slog.Logger) (*pull.Recorder, error) {
	pr, ok := st.(store.PullRecorder)
	if !ok {
		log.Warn("the store cannot record pulls: retention treats every image as never pulled")
		return nil, nil
	}
	return pull.New(pr, pull.WithLogger(log), pull.WithCounters(m.PullsDropped, m.PullFlushErrors))
}

// apiOptions are the registry API's options as serve wires them: reads
// through the cache, client manifest GETs recorded by rec (when not nil).
func apiOptions(c *cache.Cache, rec *pull.Recorder, log *slog.Logger, m *metrics.Set) []registryapi.Option {
	opts := []registryapi.Option{registryapi.WithReader(c), registryapi.WithLogger(log), registryapi.WithMetrics(m)}
	if rec != nil {
		opts = append(opts, registryapi.WithPulls(rec))
	}
	return opts
}

// redirectOption is the API option of storage.s3.redirect: warm blob GETs
// answered with presigned URLs of st. It returns nil when redirects are
// off or st cannot presign.
func redirectOption(cfg *config.Config, st store.Store) registryapi.Option {
	p, ok := st.(store.Presigner)
	if !ok || cfg.Storage.S3 == nil || !cfg.Storage.S3.Redirect {
		return nil
	}
	return registryapi.WithRedirect(p)
}
