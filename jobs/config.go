package jobs

import "github.com/regwarm/regwarm/internal/config"

// Registries is all the jobs read of regwarm's configuration: the
// registries and their connectors, by name. *config.Config implements it;
// each job's own settings (schedule, rate, repair) come as options.
type Registries interface {
	Registry(name string) (*config.Registry, bool)
	Connector(name string) (*config.Connector, bool)
	RegistryForHost(host string) (*config.Registry, bool)
	RegistryNames() []string
}

var _ Registries = (*config.Config)(nil)
