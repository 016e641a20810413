package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadExample(t *testing.T) {
	t.Parallel()
	c, err := Load("../../config.example.yaml")
	if err != nil {
		t.Fatalf("config.example.yaml: %v", err)
	}
	if r, ok := c.DefaultRegistry(); !ok || r.Name != "hub" {
		t.Errorf("default registry = %v, %v; want hub", r, ok)
	}
	if c.Auth != nil {
		t.Errorf("example enables auth; it should be commented out")
	}
	for _, name := range []string{"hub", "prerelease", "release"} {
		if _, ok := c.Registry(name); !ok {
			t.Errorf("example lacks registry %q", name)
		}
	}
}

// TestExampleDocumentsEveryKey checks that config.example.yaml mentions
// every key the config accepts (auth is there, commented out).
func TestExampleDocumentsEveryKey(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for typ, keys := range knownKeys() {
		for _, k := range keys {
			if !strings.Contains(text, k+":") {
				t.Errorf("config.example.yaml lacks key %q (%s)", k, typ)
			}
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want os.ErrNotExist", err)
	}
}

func TestLoadFile(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "regwarm.yaml")
	if err := os.WriteFile(p, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err != nil {
		t.Fatalf("Load: %v", err)
	}
}

func TestParseFull(t *testing.T) {
	t.Parallel()
	c := mustParse(t, full)
	hub, ok := c.Registry("hub")
	if !ok {
		t.Fatal("no registry hub")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"data_dir", c.DataDir, "/var/lib/regwarm"},
		{"log.format", c.Log.Format, "json"},
		{"serve.tls.key_file", c.Serve.TLS.KeyFile, "/etc/regwarm/tls.key"},
		{"store root", c.StoreRoot(), "/srv/store"},
		{"nats store", c.NATSStoreDir(), "/srv/nats"},
		{"reports", c.ReportsDir(), "/var/lib/regwarm/reports"},
		{"hub.tag_ttl", hub.TagTTL.D(), 10 * time.Minute},
		{"hub.referrers", hub.SyncReferrers(), false},
		{"hub.platforms", strings.Join(hub.Sync.Platforms, ","), "linux/amd64,linux/arm/v7"},
		{"connectors", len(c.Connectors), 3},
		{"dockerhub.concurrency", c.Connectors[0].Concurrency, 8},
		{"ghcr.concurrency (default)", c.Connectors[1].Concurrency, 4},
		{"worker", c.Worker, Worker{Concurrency: 2, MaxDeliveries: 3, AckWait: Duration(30 * time.Second)}},
		{"auth rules", len(c.Auth.Rules), 3},
		{"repair", c.Jobs.DanglingScan.Repair, true},
		{"verify rate", c.Jobs.Verify.MaxBytesPerSecond, int64(1048576)},
		{"refresh images", len(c.Jobs.Refresh.Images), 2},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestParseDocumentShape(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		kind error
		want []string
	}{
		{"empty", "", ErrEmpty, []string{"empty"}},
		{"whitespace", "\n  \n", ErrEmpty, nil},
		{"comments only", "# nothing\n", ErrEmpty, nil},
		{"document marker only", "---\n", ErrEmpty, nil},
		{"null document", "~\n", ErrEmpty, nil},
		{"two documents", "version: 1\n---\nversion: 1\n", ErrMultipleDocuments, []string{"line 2"}},
		{"empty second document", "version: 1\n---\n", ErrMultipleDocuments, nil},
		{"sequence", "- version\n", ErrDecode, []string{"mapping"}},
		{"scalar", "hello\n", ErrDecode, []string{"mapping"}},
		{"syntax error with line", "log:\n  level: info\n bad: 1\n", ErrDecode, []string{"line 2:", "did not find expected key"}},
		{"syntax error found by line", "version: 1\nlog: level: info\n", ErrDecode, []string{"line 2:", "mapping values"}},
		{"bad second document", "version: 1\n---\n[\n", ErrDecode, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tt.in))
			wantErr(t, err, tt.kind, tt.want...)
		})
	}
}

func TestParseStrict(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"unknown top-level key", "version: 1\nversoin: 1\n",
			[]string{`line 2: versoin: unknown key (did you mean "version"?)`}},
		{"unknown nested key", "registries:\n  - name: hub\n    push: true\n    tag_tll: 5m\n",
			[]string{`line 4: registries[0].tag_tll: unknown key (did you mean "tag_ttl"?)`}},
		{"unknown key in flow mapping", "log: {level: info, colour: true}\n",
			[]string{"line 1: log.colour: unknown key"}},
		{"unknown key deep", "jobs:\n  verify:\n    max_bytes: 1\n",
			[]string{"line 3: jobs.verify.max_bytes: unknown key"}},
		{"unknown key without hint", "zzz: 1\n",
			[]string{"line 1: zzz: unknown key"}},
		{"string for int", "worker:\n  concurrency: four\n",
			[]string{`line 2: worker.concurrency: "four": want an integer`}},
		{"long string for int", "worker:\n  max_deliveries: a-very-long-value\n",
			[]string{`worker.max_deliveries: "a-very-long-value": want an integer`}},
		{"list for int", "worker:\n  concurrency: [1]\n",
			[]string{"line 2: worker.concurrency: want an integer, got a list"}},
		{"string for bool", "registries: [{name: hub, push: maybe}]\n",
			[]string{`registries[0].push: "maybe": want true or false`}},
		{"mapping for list", "registries: {name: hub}\n",
			[]string{"registries: want a list, got a mapping"}},
		{"scalar for section", "log: loud\n",
			[]string{`log: "loud": want a mapping of keys to values`}},
		{"bad duration", "registries: [{name: hub, push: true, tag_ttl: 5 minutes}]\n",
			[]string{`line 1: registries[0].tag_ttl: "5 minutes": want a number with a unit`}},
		{"duration without unit", "registries:\n  - name: hub\n    push: true\n    tag_ttl: 300\n",
			[]string{`line 4: registries[0].tag_ttl: "300"`}},
		{"list for duration", "registries:\n  - name: hub\n    push: true\n    tag_ttl: [1]\n",
			[]string{"registries[0].tag_ttl: want a duration like 5m, got a list"}},
		{"list for int in flow style", "registries: [{name: hub, push: true, tag_ttl: 1m}]\nworker: {concurrency: [1]}\n",
			[]string{"line 2: worker.concurrency: want an integer, got a list"}},
		{"same line, several values", "worker: {concurrency: 1, max_deliveries: x}\n",
			[]string{`line 1: worker.max_deliveries: "x": want an integer`}},
		{"duplicate key", "version: 1\nversion: 1\n",
			[]string{"line 2: version: key given more than once (first at line 1)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tt.in))
			wantErr(t, err, ErrDecode, tt.want...)
		})
	}
}

func TestParseReportsEveryDecodeError(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte("versoin: 1\nworker: {concurrency: x}\nregistries: [{name: hub, tag_tll: 1m}]\n"))
	wantErr(t, err, ErrDecode, "line 1: versoin", "line 2: worker.concurrency", "line 3: registries[0].tag_tll")
}

func TestParseMergeKeys(t *testing.T) {
	t.Parallel()
	in := `
base: &base {push: true, tag_ttl: 1m}
registries:
  - {<<: *base, name: a}
`
	// "base" is not a config key, so even a YAML-only helper key is refused.
	_, err := Parse([]byte(in))
	wantErr(t, err, ErrDecode, "line 2: base: unknown key")

	in = `
registries:
  - &a {name: a, push: true, tag_ttl: 1m}
  - {<<: *a, name: b}
`
	c := mustParse(t, in)
	if b, _ := c.Registry("b"); b.TagTTL.D() != time.Minute || !b.Push {
		t.Errorf("merged registry b = %+v", b)
	}
}

func TestDurationYAML(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"90s", 90 * time.Second},
		{"5m", 5 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"0", 0},
		{"0s", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, "registries: [{name: hub, push: true, tag_ttl: "+tt.in+"}]\n")
			if got := c.Registries[0].TagTTL.D(); got != tt.want {
				t.Errorf("tag_ttl %s = %v, want %v", tt.in, got, tt.want)
			}
			v, err := c.Registries[0].TagTTL.MarshalYAML()
			if err != nil || v != tt.want.String() {
				t.Errorf("MarshalYAML = %v, %v; want %q", v, err, tt.want.String())
			}
		})
	}
}
