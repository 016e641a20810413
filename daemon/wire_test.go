package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

// TestCacheConfig checks the cache's part of a config: registries in
// order with their tag TTLs, an upstream shared by two registries built
// once with the password from its file, a local connector with its filter,
// and a missing password file reported without a panic.
func TestCacheConfig(t *testing.T) {
	up := upstreamtest.New(t)
	const pass = "s3cr3t-wire"
	up.RequireBasic("puller", pass)
	img := up.AddImage("app", "v1", 100)
	pf := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pf, []byte(pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := `version: 1
registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: 2m}
  - {name: promoted, connectors: [hubc, up], tag_ttl: 0s}
connectors:
  - {name: up, url: "` + up.URL + `", username: puller, password_file: "PF"}
  - {name: hubc, registry: hub, include: ["team/**"]}
`
	cfg, err := config.Parse([]byte(strings.ReplaceAll(yaml, "PF", pf)))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := CacheConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cc.Registries) != 2 || cc.Registries[0].Name != "hub" || cc.Registries[1].Name != "promoted" {
		t.Fatalf("registries %+v", cc.Registries)
	}
	hub, promoted := cc.Registries[0], cc.Registries[1]
	if hub.TagTTL != 2*time.Minute || promoted.TagTTL != 0 {
		t.Errorf("tag ttls %s, %s; want 2m0s, 0s", hub.TagTTL, promoted.TagTTL)
	}
	if len(promoted.Connectors) != 2 || promoted.Connectors[0].Name != "hubc" || promoted.Connectors[1].Name != "up" {
		t.Fatalf("promoted's connectors %+v", promoted.Connectors)
	}
	local := promoted.Connectors[0]
	if local.Source != nil || local.Registry != "hub" || !local.Filter.Allowed("team/app") || local.Filter.Allowed("other/app") {
		t.Errorf("local connector %+v", local)
	}
	if hub.Connectors[0].Source == nil || hub.Connectors[0].Source != promoted.Connectors[1].Source {
		t.Error("the upstream listed by two registries was not built once")
	}
	m, err := hub.Connectors[0].Source.GetManifest(context.Background(), "app", "v1")
	if err != nil || m.Digest != img.Digest {
		t.Fatalf("manifest with the password from its file: %v", err)
	}

	cfg.Connectors[0].PasswordFile = filepath.Join(t.TempDir(), "missing")
	if _, err := CacheConfig(cfg); !errors.Is(err, config.ErrSecret) {
		t.Fatalf("missing password file: %v, want config.ErrSecret", err)
	}
}
