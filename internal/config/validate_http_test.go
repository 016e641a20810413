package config

import (
	"path/filepath"
	"testing"
	"time"
)

func TestValidateHTTPLimits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   []string // nil: valid
	}{
		{"external url", func(c *Config) { c.Serve.ExternalURL = "https://registry.example.com:8443" }, nil},
		{"external url slash", func(c *Config) { c.Serve.ExternalURL = "http://registry.example.com/" }, nil},
		{"external url path", func(c *Config) { c.Serve.ExternalURL = "https://registry.example.com/v2" },
			[]string{`serve.external_url: "https://registry.example.com/v2": must be scheme://host[:port] without a path, query or fragment`}},
		{"external url query", func(c *Config) { c.Serve.ExternalURL = "https://r.example.com?x=1" }, []string{"serve.external_url", "without a path, query"}},
		{"external url scheme", func(c *Config) { c.Serve.ExternalURL = "registry.example.com:5000" }, []string{"serve.external_url", "must start with http:// or https://"}},
		{"external url host", func(c *Config) { c.Serve.ExternalURL = "https://" }, []string{"serve.external_url", "must name a host"}},
		{"external url user", func(c *Config) { c.Serve.ExternalURL = "https://u@r.example.com" }, []string{"serve.external_url", "user info"}},
		{"max connections", func(c *Config) { c.Serve.MaxConnections = -1 }, []string{"serve.max_connections: -1: must be at least 1"}},
		{"per client over total", func(c *Config) { c.Serve.MaxConnections, c.Serve.MaxConnectionsPerClient = 10, 20 },
			[]string{"serve.max_connections_per_client: 20: must be between 1 and serve.max_connections"}},
		{"header timeout", func(c *Config) { c.Serve.HeaderTimeout = Duration(time.Millisecond) }, []string{`serve.header_timeout: "1ms": must be at least 1s`}},
		{"body idle timeout", func(c *Config) { c.Serve.BodyIdleTimeout = -Duration(time.Second) }, []string{"serve.body_idle_timeout"}},
		{"throttle failures", func(c *Config) { c.Auth.Throttle.MaxFailures = -1 }, []string{"auth.throttle.max_failures: -1"}},
		{"throttle per client", func(c *Config) { c.Auth.Throttle.MaxFailuresPerClient = 2 }, []string{"auth.throttle.max_failures_per_client: 2"}},
		{"throttle window", func(c *Config) { c.Auth.Throttle.Window = Duration(time.Millisecond) }, []string{"auth.throttle.window"}},
		{"throttle entries", func(c *Config) { c.Auth.Throttle.MaxEntries = 5 }, []string{"auth.throttle.max_entries: 5"}},
		{"token ttl", func(c *Config) { c.Auth.Token.TTL = Duration(48 * time.Hour) }, []string{`auth.token.ttl: "48h0m0s": must be between 10s and 24h`}},
		{"external", func(c *Config) {
			c.Auth.External = &AuthExternal{Realm: "https://auth.example.com/token", Service: "s", Issuer: "i", RootCertBundle: "/b.pem"}
		}, nil},
		{"external incomplete", func(c *Config) { c.Auth.External = &AuthExternal{Realm: "auth.example.com"} },
			[]string{"auth.external.realm", "auth.external.service: required", "auth.external.issuer: required", "auth.external.rootcert_bundle: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, full)
			tt.mutate(c)
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			wantErr(t, err, ErrInvalid, tt.want...)
		})
	}
}

func TestHTTPDefaults(t *testing.T) {
	t.Parallel()
	c := mustParse(t, full)
	s := c.Serve
	if s.MaxConnections != 4096 || s.MaxConnectionsPerClient != 256 || s.HeaderTimeout.D() != 10*time.Second || s.BodyIdleTimeout.D() != 30*time.Second {
		t.Fatalf("serve defaults %+v", s)
	}
	a := c.Auth
	if a.Throttle != (AuthThrottle{MaxFailures: 5, MaxFailuresPerClient: 20, Window: Duration(time.Minute), MaxEntries: 10000}) {
		t.Fatalf("throttle defaults %+v", a.Throttle)
	}
	if a.Token.KeyFile != filepath.Join(c.DataDir, "auth-token.key") || a.Token.Issuer != "regwarm" || a.Token.Service != "regwarm" || a.Token.TTL.D() != 5*time.Minute {
		t.Fatalf("token defaults %+v", a.Token)
	}
	if err := c.Override(Overrides{DataDir: "/elsewhere"}); err != nil {
		t.Fatal(err)
	}
	if c.Auth.Token.KeyFile != "/elsewhere/auth-token.key" {
		t.Fatalf("key file after --data-dir: %s", c.Auth.Token.KeyFile)
	}
}
