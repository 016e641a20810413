package registryapi

import "github.com/regwarm/regwarm/internal/config"

// Config is what the API reads of regwarm's configuration.
type Config struct {
	Registries Registries   // required
	Serve      config.Serve // limits, timeouts and the external URL
	Auth       *config.Auth // nil: no authentication
}

// Registries finds the registry a request names: by name, by the upstream
// host it mirrors, or the default. *config.Config implements it.
type Registries interface {
	Registry(name string) (*config.Registry, bool)
	RegistryForHost(host string) (*config.Registry, bool)
	DefaultRegistry() (*config.Registry, bool)
	ConnectorHosts() []string
}

var _ Registries = (*config.Config)(nil)
