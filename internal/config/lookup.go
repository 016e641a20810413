package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/regwarm/regwarm/internal/ref"
)

// CanonicalHost returns host in the form used for matching connector
// hosts: lower case, with Docker Hub's aliases (ref.IsDockerHub) folded
// into docker.io.
func CanonicalHost(host string) string {
	if ref.IsDockerHub(host) {
		return ref.DockerHub
	}
	return strings.ToLower(host)
}

// ConnectorHosts returns the upstream hosts of the connectors that have
// one, in file order.
func (c *Config) ConnectorHosts() []string {
	var hosts []string
	for _, cn := range c.Connectors {
		if cn.Host != "" {
			hosts = append(hosts, cn.Host)
		}
	}
	return hosts
}

// RegistryNames returns the names of the registries, in file order.
func (c *Config) RegistryNames() []string {
	names := make([]string, len(c.Registries))
	for i, r := range c.Registries {
		names[i] = r.Name
	}
	return names
}

// Registry returns the registry named name.
func (c *Config) Registry(name string) (*Registry, bool) {
	for i := range c.Registries {
		if c.Registries[i].Name == name {
			return &c.Registries[i], true
		}
	}
	return nil, false
}

// DefaultRegistry returns the registry marked default: true, which also
// serves unprefixed /v2/<repo> paths.
func (c *Config) DefaultRegistry() (*Registry, bool) {
	for i := range c.Registries {
		if c.Registries[i].Default {
			return &c.Registries[i], true
		}
	}
	return nil, false
}

// Connector returns the connector named name.
func (c *Config) Connector(name string) (*Connector, bool) {
	for i := range c.Connectors {
		if c.Connectors[i].Name == name {
			return &c.Connectors[i], true
		}
	}
	return nil, false
}

// ConnectorByHost returns the connector whose host is host. Matching
// ignores case and treats docker.io, index.docker.io and
// registry-1.docker.io as one host (see CanonicalHost). Only the host key
// is matched, not the host of the connector's url.
func (c *Config) ConnectorByHost(host string) (*Connector, bool) {
	want := CanonicalHost(host)
	for i := range c.Connectors {
		if h := c.Connectors[i].Host; h != "" && CanonicalHost(h) == want {
			return &c.Connectors[i], true
		}
	}
	return nil, false
}

// RegistryForHost returns the registry that serves images of an upstream
// host (containerd's ?ns= and names like docker.io/library/alpine). It
// finds the connector with that host (ConnectorByHost), then, in file
// order, the first registry that lists it as its first connector; failing
// that, the first registry that lists it at all.
func (c *Config) RegistryForHost(host string) (*Registry, bool) {
	cn, ok := c.ConnectorByHost(host)
	if !ok {
		return nil, false
	}
	for i := range c.Registries {
		if r := &c.Registries[i]; len(r.Connectors) > 0 && r.Connectors[0] == cn.Name {
			return r, true
		}
	}
	for i := range c.Registries {
		if r := &c.Registries[i]; slices.Contains(r.Connectors, cn.Name) {
			return r, true
		}
	}
	return nil, false
}

// SyncReferrers reports whether workers also warm the referrers (signatures,
// SBOMs) of images in r; true unless sync.referrers is false.
func (r *Registry) SyncReferrers() bool {
	return r.Sync.Referrers == nil || *r.Sync.Referrers
}

// StoreRoot returns the filesystem store's root directory.
func (c *Config) StoreRoot() string {
	if c.Storage.Filesystem.Root != "" {
		return c.Storage.Filesystem.Root
	}
	return storeRoot(c.DataDir)
}

// NATSStoreDir returns the embedded NATS server's JetStream directory.
func (c *Config) NATSStoreDir() string {
	if c.NATS.Embedded.StoreDir != "" {
		return c.NATS.Embedded.StoreDir
	}
	return natsStoreDir(c.DataDir)
}

// ReportsDir returns the directory scheduled jobs write reports to,
// <data_dir>/reports.
func (c *Config) ReportsDir() string { return filepath.Join(c.DataDir, "reports") }

// Password returns the connector's password from password_env or
// password_file, without a trailing newline; "" with a nil error when
// neither is set. Errors match ErrSecret and name the connector and field,
// never the secret.
func (cn *Connector) Password() (string, error) {
	var (
		v     string
		field string
	)
	switch {
	case cn.PasswordEnv != "":
		field = "password_env"
		s, ok := os.LookupEnv(cn.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("%w: connector %q: password_env: environment variable %s is not set", ErrSecret, cn.Name, cn.PasswordEnv)
		}
		v = s
	case cn.PasswordFile != "":
		field = "password_file"
		b, err := os.ReadFile(cn.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("%w: connector %q: password_file: %w", ErrSecret, cn.Name, err)
		}
		v = string(b)
	default:
		return "", nil
	}
	v = strings.TrimRight(v, "\r\n")
	if v == "" {
		return "", fmt.Errorf("%w: connector %q: %s: the password is empty", ErrSecret, cn.Name, field)
	}
	return v, nil
}

// Redacted returns a deep copy of c that is safe to print or log: the
// userinfo of every URL is replaced by "xxxxx". The config holds no
// passwords itself, only where to read them.
func (c *Config) Redacted() *Config {
	r := c.clone()
	for i := range r.Connectors {
		r.Connectors[i].URL = redactURL(r.Connectors[i].URL)
	}
	r.NATS.URL = redactURLs(r.NATS.URL)
	return r
}

// clone returns a deep copy of c.
func (c *Config) clone() *Config {
	r := *c
	r.Registries = slices.Clone(c.Registries)
	for i := range r.Registries {
		reg := &r.Registries[i]
		reg.Connectors = slices.Clone(reg.Connectors)
		reg.Sync.Platforms = slices.Clone(reg.Sync.Platforms)
		if reg.Sync.Referrers != nil {
			b := *reg.Sync.Referrers
			reg.Sync.Referrers = &b
		}
		if reg.Retention != nil {
			rt := *reg.Retention
			rt.Keep = slices.Clone(rt.Keep)
			reg.Retention = &rt
		}
	}
	r.Connectors = slices.Clone(c.Connectors)
	for i := range r.Connectors {
		r.Connectors[i].Include = slices.Clone(r.Connectors[i].Include)
		r.Connectors[i].Exclude = slices.Clone(r.Connectors[i].Exclude)
	}
	if c.Auth != nil {
		a := *c.Auth
		a.Rules = slices.Clone(a.Rules)
		for i := range a.Rules {
			a.Rules[i].Users = slices.Clone(a.Rules[i].Users)
			a.Rules[i].Allow = slices.Clone(a.Rules[i].Allow)
		}
		r.Auth = &a
	}
	r.Jobs.Refresh.Images = slices.Clone(c.Jobs.Refresh.Images)
	r.Webhooks = slices.Clone(c.Webhooks)
	for i := range r.Webhooks {
		r.Webhooks[i].Actions = slices.Clone(r.Webhooks[i].Actions)
	}
	return &r
}

// YAML encodes c as YAML that Parse accepts, for `regwarm config check`.
// It does not redact: print c.Redacted().YAML().
func (c *Config) YAML() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return b.Bytes(), nil
}
