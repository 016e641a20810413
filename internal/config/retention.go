package config

import (
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Retention is a registry's retention policy, applied by the gc job: what
// may be removed besides content nothing references.
type Retention struct {
	// MaxBytes is the budget for the registry's distinct blobs and
	// manifests (kept images included); over it, the least recently
	// pulled images go first until it fits. 0: no budget.
	MaxBytes ByteSize `yaml:"max_bytes"`
	// UnpulledFor removes images not pulled for this long. 0: never.
	UnpulledFor Duration `yaml:"unpulled_for"`
	// Keep lists "<repo-glob>:<tag-glob>" patterns (path.Match syntax)
	// whose images retention never removes.
	Keep []string `yaml:"keep"`
	// Pushed lets retention remove pushed content too; by default it
	// removes only content that came from connectors.
	Pushed bool `yaml:"pushed"`
}

// Keeps reports whether a keep pattern protects tag of repo.
func (r *Retention) Keeps(repo, tag string) bool {
	for _, k := range r.Keep {
		rg, tg, ok := strings.Cut(k, ":")
		if !ok {
			continue
		}
		if m, _ := path.Match(rg, repo); !m {
			continue
		}
		if m, _ := path.Match(tg, tag); m {
			return true
		}
	}
	return false
}

// retention validates a registry's retention block.
func (v *validator) retention(p string, r *Retention) {
	if r == nil {
		return
	}
	if r.MaxBytes < 0 {
		v.add(p+".max_bytes", int64(r.MaxBytes), "must not be negative")
	}
	if r.UnpulledFor < 0 {
		v.add(p+".unpulled_for", r.UnpulledFor.String(), "must not be negative")
	}
	for i, k := range r.Keep {
		kp := fmt.Sprintf("%s.keep[%d]", p, i)
		rg, tg, ok := strings.Cut(k, ":")
		switch {
		case !ok || rg == "" || tg == "" || strings.Contains(tg, ":"):
			v.add(kp, k, `want "<repo-glob>:<tag-glob>", like "library/*:latest"`)
		case !validGlob(rg):
			v.add(kp, k, "repository part is not a valid glob (path.Match syntax)")
		case !validGlob(tg):
			v.add(kp, k, "tag part is not a valid glob (path.Match syntax)")
		}
	}
}

func validGlob(g string) bool {
	_, err := path.Match(g, "x")
	return err == nil
}

// ByteSize is a number of bytes, written in YAML as an integer or with a
// unit: "500MB" (decimal: kB, MB, GB, TB) or "50GiB" (binary: KiB, MiB,
// GiB, TiB); "B" means bytes. A fraction is allowed with a unit ("1.5GiB").
type ByteSize int64

var (
	_ yaml.Unmarshaler = (*ByteSize)(nil)
	_ yaml.Marshaler   = ByteSize(0)
)

// byteUnits are the accepted units, longest first for suffix matching.
var byteUnits = []struct {
	name string
	mult float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// ParseByteSize parses "123", "500MB" or "50GiB".
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return ByteSize(n), nil
	}
	for _, u := range byteUnits {
		num, ok := strings.CutSuffix(s, u.name)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			break
		}
		b := f * u.mult
		if b >= math.MaxInt64 {
			return 0, fmt.Errorf("%q is too large", s)
		}
		return ByteSize(b), nil
	}
	return 0, fmt.Errorf("%q: want bytes or a number with a unit, like 500MB or 50GiB", s)
}

// UnmarshalYAML reads an integer or a size with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: cannot unmarshal %s into config.ByteSize", n.Line, n.ShortTag()),
		}}
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: invalid byte size %q: want bytes or a number with a unit, like 500MB or 50GiB", n.Line, n.Value),
		}}
	}
	*b = v
	return nil
}

// String writes b with the largest binary unit that divides it ("50GiB"),
// or as plain bytes.
func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalYAML writes b as String does.
func (b ByteSize) MarshalYAML() (any, error) {
	if s := b.String(); !strings.HasSuffix(s, "B") {
		return int64(b), nil
	}
	return b.String(), nil
}
