package config

import (
	"path/filepath"
	"testing"
	"time"
)

func TestDefault(t *testing.T) {
	t.Parallel()
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default() is invalid: %v", err)
	}
	local, ok := c.Registry("local")
	if !ok {
		t.Fatalf("Default() registries = %+v, want local", c.Registries)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"version", c.Version, 1},
		{"data_dir", c.DataDir, "./regwarm-data"},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "text"},
		{"serve.listen", c.Serve.Listen, "127.0.0.1:5000"},
		{"metrics.listen", c.Metrics.Listen, "127.0.0.1:9466"},
		{"storage root", c.Storage.Filesystem.Root, filepath.Join("regwarm-data", "store")},
		{"nats.url", c.NATS.URL, ""},
		{"nats listen", c.NATS.Embedded.Listen, "127.0.0.1:4222"},
		{"nats store", c.NATS.Embedded.StoreDir, filepath.Join("regwarm-data", "nats")},
		{"subject_prefix", c.NATS.SubjectPrefix, "regwarm"},
		{"registries", len(c.Registries), 1},
		{"local default", local.Default, true},
		{"local push", local.Push, true},
		{"local tag_ttl", local.TagTTL.D(), 5 * time.Minute},
		{"local referrers", local.SyncReferrers(), true},
		{"worker concurrency", c.Worker.Concurrency, 4},
		{"max_deliveries", c.Worker.MaxDeliveries, 5},
		{"auth", c.Auth == nil, true},
		{"dangling_scan", c.Jobs.DanglingScan.Schedule, "0 3 * * *"},
		{"verify", c.Jobs.Verify.Schedule, "@weekly"},
		{"refresh", c.Jobs.Refresh.Schedule, "*/30 * * * *"},
		{"reports", c.ReportsDir(), filepath.Join("regwarm-data", "reports")},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestParseMinimal(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"version: 1\n", "{version: 1}\n", "registries:\n", "data_dir: /d\n"} {
		t.Run(in, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, in)
			if r, ok := c.DefaultRegistry(); !ok || r.Name != "local" || !r.Push {
				t.Errorf("default registry = %+v, %v; want local with push", r, ok)
			}
		})
	}
}

func TestDefaultsFollowDataDir(t *testing.T) {
	t.Parallel()
	c := mustParse(t, "data_dir: /d\n")
	if c.StoreRoot() != "/d/store" || c.NATSStoreDir() != "/d/nats" || c.ReportsDir() != "/d/reports" {
		t.Errorf("paths = %s %s %s, want below /d", c.StoreRoot(), c.NATSStoreDir(), c.ReportsDir())
	}
}

func TestDefaultsKeepExplicitZero(t *testing.T) {
	t.Parallel()
	c := mustParse(t, `
registries:
  - {name: a, push: true, tag_ttl: 0s}
  - {name: b, push: true}
  - {name: c, push: true, tag_ttl: ~}
jobs:
  dangling_scan: {schedule: ""}
  verify: {schedule: }
  refresh: {images: []}
`)
	want := []time.Duration{0, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		if got := c.Registries[i].TagTTL.D(); got != w {
			t.Errorf("registries[%d].tag_ttl = %v, want %v", i, got, w)
		}
	}
	if got := c.Jobs.DanglingScan.Schedule; got != "" {
		t.Errorf(`dangling_scan.schedule = %q, want "" (disabled)`, got)
	}
	if got := c.Jobs.Verify.Schedule; got != "@weekly" {
		t.Errorf("verify.schedule (null) = %q, want the default", got)
	}
	if got := c.Jobs.Refresh.Schedule; got != "*/30 * * * *" {
		t.Errorf("refresh.schedule (absent) = %q, want the default", got)
	}

	// Applying defaults again, as Override does, keeps the explicit zeros.
	c.ApplyDefaults()
	if c.Registries[0].TagTTL != 0 || c.Jobs.DanglingScan.Schedule != "" {
		t.Errorf("ApplyDefaults replaced explicit values: %v %q", c.Registries[0].TagTTL, c.Jobs.DanglingScan.Schedule)
	}
}

func TestApplyDefaultsKeepsSetValues(t *testing.T) {
	t.Parallel()
	off := false
	c := &Config{
		Registries: []Registry{{Name: "a", Push: true, TagTTL: Duration(time.Hour), Sync: Sync{Referrers: &off}}},
		Connectors: []Connector{{Name: "u", URL: "https://r.io", Concurrency: 9}},
		Worker:     Worker{Concurrency: 7},
	}
	c.ApplyDefaults()
	r := c.Registries[0]
	if r.Default || r.TagTTL.D() != time.Hour || r.SyncReferrers() || c.Connectors[0].Concurrency != 9 || c.Worker.Concurrency != 7 || c.Worker.MaxDeliveries != 5 {
		t.Errorf("ApplyDefaults changed set values or missed unset ones: %+v %+v %+v", r, c.Connectors[0], c.Worker)
	}
}

func TestOverride(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		o       Overrides
		check   func(c *Config) bool
		wantErr string
	}{
		{"data dir moves derived paths", "data_dir: /a\n", Overrides{DataDir: "/b"}, func(c *Config) bool {
			return c.DataDir == "/b" && c.StoreRoot() == "/b/store" && c.NATSStoreDir() == "/b/nats" && c.ReportsDir() == "/b/reports"
		}, ""},
		{"data dir keeps explicit paths", "data_dir: /a\nstorage: {filesystem: {root: /s}}\n", Overrides{DataDir: "/b"}, func(c *Config) bool {
			return c.StoreRoot() == "/s" && c.NATSStoreDir() == "/b/nats"
		}, ""},
		{"listeners and nats", "version: 1\n", Overrides{Listen: ":5001", MetricsListen: ":9091", NATSURL: "nats://n:4222", LogLevel: "debug"}, func(c *Config) bool {
			return c.Serve.Listen == ":5001" && c.Metrics.Listen == ":9091" && c.NATS.URL == "nats://n:4222" && c.Log.Level == "debug"
		}, ""},
		{"empty changes nothing", "log: {level: warn}\n", Overrides{}, func(c *Config) bool { return c.Log.Level == "warn" }, ""},
		{"invalid override", "version: 1\n", Overrides{LogLevel: "loud"}, nil, `log.level: "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, tt.in)
			err := c.Override(tt.o)
			if tt.wantErr != "" {
				wantErr(t, err, ErrInvalid, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("Override: %v", err)
			}
			if !tt.check(c) {
				t.Errorf("after Override: %+v", c)
			}
		})
	}
}
