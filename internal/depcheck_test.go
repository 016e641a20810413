// Package depcheck_test pins down the package graph: which of regwarm's
// packages may depend on which. It reads the graph with `go list`.
package depcheck_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/regwarm/regwarm/"

// rule forbids packages whose path (relative to the module) has prefix from
// to depend, directly or through others, on a package with a prefix in deny.
type rule struct {
	from string
	deny []string
}

var rules = []rule{
	{"internal/", []string{"daemon", "jobs", "registryapi", "cmd"}},
	{"registryapi", []string{"internal/cache", "internal/events", "internal/connector", "jobs", "daemon"}},
	{"jobs", []string{"internal/events"}},
	{"internal/cache", []string{"internal/config", "internal/events"}},
}

// known are today's violations, allowed until the refactor that removes
// them; any other violation fails, and so does an entry no longer needed.
var known = map[string]string{}

// hasPrefix reports whether pkg is p or under p/.
func hasPrefix(pkg, p string) bool {
	p = strings.TrimSuffix(p, "/")
	return pkg == p || strings.HasPrefix(pkg, p+"/")
}

func TestImportRules(t *testing.T) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Deps", "./...")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	type pkg struct {
		ImportPath string
		Deps       []string
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}

	seen := map[string]bool{}
	for _, p := range pkgs {
		from := strings.TrimPrefix(p.ImportPath, module)
		for _, r := range rules {
			if !hasPrefix(from, r.from) {
				continue
			}
			for _, dep := range p.Deps {
				to, ok := strings.CutPrefix(dep, module)
				if !ok || !slices.ContainsFunc(r.deny, func(d string) bool { return hasPrefix(to, d) }) {
					continue
				}
				key := r.from + " -> " + denied(r.deny, to)
				if _, ok := known[key]; ok {
					seen[key] = true
					continue
				}
				t.Errorf("%s depends on %s (rule: %s must not depend on %v)", from, to, r.from, r.deny)
			}
		}
	}
	for k, why := range known {
		if !seen[k] {
			t.Errorf("known exception %q (%s) no longer occurs: remove it from the allow-list", k, why)
		}
	}
}

// denied returns the entry of deny that pkg falls under.
func denied(deny []string, pkg string) string {
	for _, d := range deny {
		if hasPrefix(pkg, d) {
			return d
		}
	}
	return pkg
}
