package connector

import "github.com/regwarm/regwarm/internal/config"

// NewUpstream builds the connector c of regwarm's config: New with c's
// settings and its password read (password_env or password_file). It is
// the one place this package reads internal/config, for internal/cache
// until that takes its own small config.
func NewUpstream(c config.Connector, opts ...UpstreamOption) (*Upstream, error) {
	pass, err := c.Password()
	if err != nil {
		return nil, err
	}
	return New(Config{Name: c.Name, URL: c.URL, Host: c.Host, Username: c.Username, Password: pass,
		Filter: Filter{Include: c.Include, Exclude: c.Exclude}, Concurrency: c.Concurrency, AuthHosts: c.AuthHosts}, opts...)
}
