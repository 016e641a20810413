package registryapi

import "github.com/regwarm/regwarm/internal/config"

// ConfigOf is the API's Config of c, as the daemon builds it.
func ConfigOf(c *config.Config) Config {
	return Config{Registries: c, Serve: c.Serve, Auth: c.Auth}
}
