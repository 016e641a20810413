package registryapi_test

import (
	"testing"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
)

// cacheConfig is the cache's part of cfg, as the daemon wires it.
func cacheConfig(t testing.TB, cfg *config.Config) cache.Config {
	t.Helper()
	cc, err := daemon.CacheConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cc
}
