package config

import (
	"bytes"
	"os"
	"testing"
)

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../config.example.yaml"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		full, "", "version: 1\n", "{}", "---\n---\n", "registries: []\n",
		"registries: [{name: a, push: true, tag_ttl: 0}]\n",
		"registries:\n  - name: hub\n    tag_tll: 5m\n",
		"worker: {concurrency: four}\n",
		"a: &a [*a]\n",
		"registries: [{name: a, connectors: [x]}]\nconnectors: [{name: x, registry: a}]\n",
		"jobs: {verify: {schedule: 'CRON_TZ=UTC @every 1s'}}\n",
		"nats: {url: 'nats://u:p@h:1,ws://h'}\n",
		"registries: [{name: a, push: true}, {name: b, connectors: [x]}]\nconnectors: [{name: x, registry: a, max_manifest_entries: 5}]\n" +
			"auth: {htpasswd_file: f, rules: [{registry: b, users: [anonymous], allow: [pull]}]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatalf("Parse returned a config with error %v", err)
			}
			return
		}
		out, err := c.YAML()
		if err != nil {
			t.Fatalf("YAML of a valid config: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("valid config does not re-validate after a YAML round trip: %v\ninput:\n%q\nYAML:\n%s", err, data, out)
		}
		out2, err := c2.YAML()
		if err != nil {
			t.Fatalf("YAML after round trip: %v", err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip is not stable:\n%s\n---\n%s", out, out2)
		}
		for _, w := range c.Warnings() {
			if w == "" {
				t.Fatal("empty warning")
			}
		}
		if _, err := c.Redacted().YAML(); err != nil {
			t.Fatalf("Redacted().YAML(): %v", err)
		}
	})
}
