package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLookups(t *testing.T) {
	t.Parallel()
	c := mustParse(t, full)
	if r, ok := c.Registry("release"); !ok || r.Name != "release" {
		t.Errorf("Registry(release) = %v, %v", r, ok)
	}
	if _, ok := c.Registry("nope"); ok {
		t.Error("Registry(nope) found something")
	}
	if r, ok := c.DefaultRegistry(); !ok || r.Name != "hub" {
		t.Errorf("DefaultRegistry = %v, %v", r, ok)
	}
	if cn, ok := c.Connector("ghcr"); !ok || cn.Host != "ghcr.io" {
		t.Errorf("Connector(ghcr) = %v, %v", cn, ok)
	}
	if _, ok := c.Connector("nope"); ok {
		t.Error("Connector(nope) found something")
	}

	// The pointers address the config itself.
	r, _ := c.Registry("hub")
	r.Push = true
	if !c.Registries[0].Push {
		t.Error("Registry returned a copy")
	}

	c.Registries[0].Default = false
	if r, ok := c.DefaultRegistry(); ok {
		t.Errorf("DefaultRegistry without default = %v", r)
	}
}

func TestHostLookups(t *testing.T) {
	t.Parallel()
	c := mustParse(t, strings.Replace(full, "\nconnectors:\n", `
  - {name: mirror, connectors: [ghcr]}
  - {name: both, connectors: [ghcr, dockerhub]}
connectors:
`, 1))
	tests := []struct {
		host      string
		connector string
		registry  string
	}{
		{"docker.io", "dockerhub", "hub"},
		{"Docker.IO", "dockerhub", "hub"},
		{"index.docker.io", "dockerhub", "hub"},
		{"registry-1.docker.io", "dockerhub", "hub"},
		// hub lists ghcr second; mirror lists it first and wins.
		{"ghcr.io", "ghcr", "mirror"},
		{"ghcr.internal:5000", "", ""},
		{"quay.io", "", ""},
		{"", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			t.Parallel()
			cn, ok := c.ConnectorByHost(tt.host)
			if got := name(ok, func() string { return cn.Name }); got != tt.connector {
				t.Errorf("ConnectorByHost(%q) = %q, want %q", tt.host, got, tt.connector)
			}
			r, ok := c.RegistryForHost(tt.host)
			if got := name(ok, func() string { return r.Name }); got != tt.registry {
				t.Errorf("RegistryForHost(%q) = %q, want %q", tt.host, got, tt.registry)
			}
		})
	}
}

func name(ok bool, f func() string) string {
	if !ok {
		return ""
	}
	return f()
}

func TestRegistryForHostAnyPosition(t *testing.T) {
	t.Parallel()
	c := mustParse(t, `
registries:
  - {name: a, push: true}
  - {name: b, connectors: [local, up]}
connectors:
  - {name: local, registry: a}
  - {name: up, url: "https://r.io", host: r.io}
`)
	if r, ok := c.RegistryForHost("r.io"); !ok || r.Name != "b" {
		t.Errorf("RegistryForHost(r.io) = %v, %v; want b", r, ok)
	}
	c.Registries[1].Connectors = []string{"local"}
	if r, ok := c.RegistryForHost("r.io"); ok {
		t.Errorf("RegistryForHost of an unused connector = %v", r)
	}
}

func TestSyncReferrers(t *testing.T) {
	t.Parallel()
	on, off := true, false
	for _, tt := range []struct {
		v    *bool
		want bool
	}{{nil, true}, {&on, true}, {&off, false}} {
		r := Registry{Sync: Sync{Referrers: tt.v}}
		if got := r.SyncReferrers(); got != tt.want {
			t.Errorf("SyncReferrers(%v) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

func TestPathsWithoutDefaults(t *testing.T) {
	t.Parallel()
	c := &Config{DataDir: "/d"}
	if c.StoreRoot() != "/d/store" || c.NATSStoreDir() != "/d/nats" || c.ReportsDir() != "/d/reports" {
		t.Errorf("paths = %s %s %s", c.StoreRoot(), c.NATSStoreDir(), c.ReportsDir())
	}
}

func TestPasswordFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		cn      Connector
		want    string
		wantErr []string
	}{
		{"none", Connector{Name: "c"}, "", nil},
		{"file", Connector{Name: "c", PasswordFile: write("pw", "s3cret\n")}, "s3cret", nil},
		{"file crlf", Connector{Name: "c", PasswordFile: write("crlf", "s3cret\r\n")}, "s3cret", nil},
		{"file keeps inner space", Connector{Name: "c", PasswordFile: write("sp", " a b \n")}, " a b ", nil},
		{"file missing", Connector{Name: "c", PasswordFile: filepath.Join(dir, "missing")}, "", []string{`connector "c": password_file:`, "missing"}},
		{"file empty", Connector{Name: "c", PasswordFile: write("empty", "\n")}, "", []string{`connector "c": password_file: the password is empty`}},
		{"env missing", Connector{Name: "c", PasswordEnv: "REGWARM_TEST_SURELY_UNSET_VARIABLE"}, "", []string{`connector "c": password_env: environment variable REGWARM_TEST_SURELY_UNSET_VARIABLE is not set`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := tt.cn.Password()
			if tt.wantErr != nil {
				wantErr(t, err, ErrSecret, tt.wantErr...)
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Password() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestPasswordEnv cannot run in parallel: it sets environment variables.
func TestPasswordEnv(t *testing.T) {
	t.Setenv("REGWARM_TEST_PW", "s3cret\n")
	t.Setenv("REGWARM_TEST_EMPTY", "")
	cn := Connector{Name: "c", PasswordEnv: "REGWARM_TEST_PW"}
	if got, err := cn.Password(); err != nil || got != "s3cret" {
		t.Errorf("Password() = %q, %v; want s3cret", got, err)
	}
	cn.PasswordEnv = "REGWARM_TEST_EMPTY"
	_, err := cn.Password()
	wantErr(t, err, ErrSecret, "password_env: the password is empty")
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error shows the secret: %v", err)
	}
}

func TestRedacted(t *testing.T) {
	t.Parallel()
	c := mustParse(t, full)
	c.NATS.URL = "nats://u:s3cret@n1:4222,nats://n2:4222"
	c.Connectors[0].URL = "https://bot:s3cret@registry-1.docker.io"
	r := c.Redacted()
	out, err := r.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("s3cret")) {
		t.Errorf("Redacted().YAML() shows a secret:\n%s", out)
	}
	if r.NATS.URL != "nats://xxxxx@n1:4222,nats://n2:4222" {
		t.Errorf("redacted nats.url = %q", r.NATS.URL)
	}

	// The copy is deep: changing it leaves the original alone.
	r.Registries[0].Connectors[0] = "changed"
	r.Registries[0].Sync.Platforms[0] = "changed"
	*r.Registries[0].Sync.Referrers = true
	r.Connectors[0].Include[0] = "changed"
	r.Auth.Rules[0].Users[0] = "changed"
	r.Jobs.Refresh.Images[0] = "changed"
	if c.Registries[0].Connectors[0] == "changed" || c.Registries[0].Sync.Platforms[0] == "changed" ||
		*c.Registries[0].Sync.Referrers || c.Connectors[0].Include[0] == "changed" ||
		c.Auth.Rules[0].Users[0] == "changed" || c.Jobs.Refresh.Images[0] == "changed" {
		t.Error("Redacted shares memory with the original")
	}
	if !strings.Contains(c.NATS.URL, "s3cret") {
		t.Error("Redacted changed the original")
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"full":    full,
		"minimal": "version: 1\n",
		"zeros":   "registries: [{name: a, push: true, tag_ttl: 0s}]\njobs: {verify: {schedule: ''}}\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, in)
			out, err := c.YAML()
			if err != nil {
				t.Fatal(err)
			}
			c2, err := Parse(out)
			if err != nil {
				t.Fatalf("Parse(YAML()) = %v\n%s", err, out)
			}
			out2, err := c2.YAML()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, out2) {
				t.Errorf("round trip changed the config:\n%s\n---\n%s", out, out2)
			}
		})
	}
}

func TestFieldErrorFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		e    FieldError
		want string
	}{
		{FieldError{Msg: "m"}, "m"},
		{FieldError{Path: "a.b", Msg: "m"}, "a.b: m"},
		{FieldError{Path: "a.b", Value: `"v"`, Msg: "m"}, `a.b: "v": m`},
		{FieldError{Line: 3, Path: "a", Msg: "m"}, "line 3: a: m"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	e := &FieldError{Msg: "m", Kind: ErrInvalid}
	if !errors.Is(e, ErrInvalid) || errors.Is(e, ErrDecode) {
		t.Error("FieldError does not match its kind")
	}
}
