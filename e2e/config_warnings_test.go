package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigCheckWarnsPromotionChain: `regwarm config check` accepts a
// promotion chain (release reads prerelease through a local connector)
// whose rules let anonymous pull release but not prerelease, exits 0 and
// warns on stderr that prerelease's content is served under release's
// rules (issue 11, finding 13); with the same rules for both it says
// nothing.
func TestConfigCheckWarnsPromotionChain(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name, rules string) string {
		path := filepath.Join(dir, name+".yaml")
		cfg := "version: 1\ndata_dir: " + filepath.Join(dir, name) + `
registries:
  - {name: prerelease, push: true}
  - {name: release, push: true, connectors: [prerelease]}
connectors:
  - {name: prerelease, registry: prerelease}
auth:
  htpasswd_file: ` + htpasswd + "\n  rules:\n" + rules
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	differ := write("differ", "    - {registry: release, users: [anonymous], allow: [pull]}\n    - {registry: prerelease, users: [ci], allow: [pull, push]}\n")
	res := runRegwarmCLI(t, "config", "check", "--config", differ)
	res.wantCode(t, 0)
	for _, want := range []string{"warning: registries[1].connectors[0]", "anonymous may pull release but not prerelease"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("config check: stderr lacks %q:\n%s", want, res.stderr)
		}
	}
	if !strings.Contains(res.stdout, "valid; effective config") {
		t.Errorf("config check: a warning made the config invalid:\n%s", res.stdout)
	}
	same := write("same", "    - {registry: \"*\", users: [anonymous], allow: [pull]}\n")
	res = runRegwarmCLI(t, "config", "check", "--config", same)
	res.wantCode(t, 0)
	if strings.Contains(res.stderr, "warning") {
		t.Errorf("config check warned about equal rules:\n%s", res.stderr)
	}
}
