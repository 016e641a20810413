package config

import (
	"strings"
	"testing"
)

func TestWarningsPromotionChainRules(t *testing.T) {
	t.Parallel()
	const regs = `
registries:
  - {name: prerelease, push: true}
  - {name: release, push: true, connectors: [prerelease]}
connectors:
  - {name: prerelease, registry: prerelease}
`
	tests := []struct {
		name string
		auth string
		want []string // substrings of the one warning; nil: no warning
	}{
		{"no auth", "", nil},
		{"anonymous may pull release only", `
auth:
  htpasswd_file: /dev/null
  rules:
    - {registry: release, users: [anonymous], allow: [pull]}
    - {registry: prerelease, users: [ci], allow: [pull, push]}
`, []string{`registries[1].connectors[0]: "prerelease"`, "registry release reads registry prerelease",
			"anonymous may pull release but not prerelease"}},
		{"a user may pull release only", `
auth:
  htpasswd_file: /dev/null
  rules:
    - {registry: release, users: [ci, dev], allow: [pull]}
    - {registry: prerelease, users: [ci], allow: [pull]}
`, []string{"dev may pull release but not prerelease"}},
		{"any signed-in user", `
auth:
  htpasswd_file: /dev/null
  rules:
    - {registry: release, users: ["*"], allow: [pull]}
    - {registry: prerelease, users: [ci], allow: [pull]}
`, []string{"any other signed-in user may pull release but not prerelease"}},
		{"same rules for both", `
auth:
  htpasswd_file: /dev/null
  rules:
    - {registry: "*", users: [anonymous, ci], allow: [pull]}
`, nil},
		{"prerelease more open than release", `
auth:
  htpasswd_file: /dev/null
  rules:
    - {registry: release, users: [ci], allow: [pull]}
    - {registry: prerelease, users: [anonymous, ci], allow: [pull]}
`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse([]byte("version: 1\n" + regs + tt.auth))
			if err != nil {
				t.Fatal(err)
			}
			got := c.Warnings()
			if tt.want == nil {
				if len(got) != 0 {
					t.Fatalf("warnings %q, want none", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("warnings %q, want one", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("warning %q does not contain %q", got[0], w)
				}
			}
		})
	}
}

func TestAuthAllowed(t *testing.T) {
	t.Parallel()
	a := &Auth{Rules: []Rule{
		{Registry: "hub", Users: []string{"anonymous"}, Allow: []string{"pull"}},
		{Registry: "*", Users: []string{"ci"}, Allow: []string{"pull", "push"}},
		{Registry: "*", Users: []string{"*"}, Allow: []string{"pull"}},
	}}
	tests := []struct {
		user, registry, action string
		want                   bool
	}{
		{"anonymous", "hub", "pull", true},
		{"anonymous", "hub", "push", false},
		{"anonymous", "release", "pull", false}, // "*" is signed-in users only
		{"ci", "release", "push", true},
		{"dev", "release", "pull", true},
		{"dev", "release", "push", false},
	}
	for _, tt := range tests {
		if got := a.Allowed(tt.user, tt.registry, tt.action); got != tt.want {
			t.Errorf("Allowed(%q, %q, %q) = %v, want %v", tt.user, tt.registry, tt.action, got, tt.want)
		}
	}
}
