package config

import (
	"strings"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]ByteSize{
		"0": 0, "123": 123, "50GiB": 50 << 30, "500MB": 500e6, "1.5KiB": 1536, "2kB": 2000, "7B": 7, "1TiB": 1 << 40, " 3 MiB ": 3 << 20,
	} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "5 parsecs", "-1GiB", "NaNGB", "1e30TiB", "5gb"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q): no error", in)
		}
	}
}

func TestRetentionConfig(t *testing.T) {
	t.Parallel()
	base := "version: 1\nregistries:\n  - name: hub\n    push: true\n    retention:\n"
	c, err := Parse([]byte(base + "      max_bytes: 50GiB\n      unpulled_for: 720h\n      keep: [\"library/*:latest\", \"team/app:v*\"]\n      pushed: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Registries[0].Retention
	if r == nil || r.MaxBytes != 50<<30 || r.UnpulledFor.D().Hours() != 720 || !r.Pushed || len(r.Keep) != 2 {
		t.Fatalf("retention = %+v", r)
	}
	for _, tc := range []struct {
		repo, tag string
		want      bool
	}{{"library/alpine", "latest", true}, {"library/alpine", "3.20", false}, {"team/app", "v1.2", true}, {"team/app/sub", "v1", false}} {
		if got := r.Keeps(tc.repo, tc.tag); got != tc.want {
			t.Errorf("Keeps(%s, %s) = %v", tc.repo, tc.tag, got)
		}
	}
	if b, err := c.YAML(); err != nil || !strings.Contains(string(b), "max_bytes: 50GiB") {
		t.Errorf("effective config does not show max_bytes: 50GiB (%v):\n%s", err, b)
	}
	if c, err := Parse([]byte("version: 1\nregistries:\n  - {name: hub, push: true, retention: {max_bytes: 1000}}\n")); err != nil || c.Registries[0].Retention.MaxBytes != 1000 {
		t.Errorf("plain bytes: %v", err)
	}
	if c, err := Parse([]byte("version: 1\nregistries:\n  - {name: hub, push: true}\n")); err != nil || c.Registries[0].Retention != nil {
		t.Errorf("absent retention: %v", err)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"      max_bytes: 50 potatoes\n", `registries[0].retention.max_bytes: "50 potatoes": want bytes or a number with a unit`},
		{"      max_bytes: -5\n", "registries[0].retention.max_bytes: -5: must not be negative"},
		{"      unpulled_for: -1h\n", `registries[0].retention.unpulled_for: "-1h0m0s": must not be negative`},
		{"      keep: [latest]\n", `registries[0].retention.keep[0]: "latest": want "<repo-glob>:<tag-glob>"`},
		{"      keep: [\"a:b:c\"]\n", `registries[0].retention.keep[0]: "a:b:c": want`},
		{"      keep: [\"[a:b\"]\n", `registries[0].retention.keep[0]: "[a:b": repository part is not a valid glob`},
		{"      keep: [\"a:[b\"]\n", `registries[0].retention.keep[0]: "a:[b": tag part is not a valid glob`},
		{"      max_byte: 5\n", `registries[0].retention.max_byte: unknown key (did you mean "max_bytes"?)`},
	} {
		_, err := Parse([]byte(base + tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %s", tc.yaml, err, tc.want)
		}
	}
}
