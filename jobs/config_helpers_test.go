package jobs

import (
	"testing"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
)

// NewTestCache builds the pull-through cache of cfg's registries over st,
// as daemon.CacheConfig wires it (daemon imports jobs: its few lines are
// repeated here). Exported for the jobs_test package.
func NewTestCache(t testing.TB, cfg *config.Config, st store.Store, opts ...cache.Option) *cache.Cache {
	t.Helper()
	conns := map[string]cache.Connector{}
	for _, c := range cfg.Connectors {
		cc := cache.Connector{Name: c.Name, Registry: c.Registry, Filter: connector.Filter{Include: c.Include, Exclude: c.Exclude}}
		if c.Registry == "" {
			pass, err := c.Password()
			if err != nil {
				t.Fatal(err)
			}
			cc.Source, err = connector.New(connector.Config{Name: c.Name, URL: c.URL, Host: c.Host, Username: c.Username,
				Password: pass, Filter: cc.Filter, Concurrency: c.Concurrency, AuthHosts: c.AuthHosts})
			if err != nil {
				t.Fatal(err)
			}
		}
		conns[c.Name] = cc
	}
	var cc cache.Config
	for _, r := range cfg.Registries {
		reg := cache.Registry{Name: r.Name, TagTTL: r.TagTTL.D(), Push: r.Push}
		for _, name := range r.Connectors {
			reg.Connectors = append(reg.Connectors, conns[name])
		}
		cc.Registries = append(cc.Registries, reg)
	}
	c, err := cache.New(cc, st, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// usageRegistries is cfg's registries as Usage takes them (as `regwarm
// usage` builds them).
func usageRegistries(cfg *config.Config) []UsageRegistry {
	var out []UsageRegistry
	for _, r := range cfg.Registries {
		u := UsageRegistry{Name: r.Name}
		if r.Retention != nil {
			u.MaxBytes = int64(r.Retention.MaxBytes)
		}
		out = append(out, u)
	}
	return out
}
