// Package deploy_test checks the deployment files in deploy/, the root
// Dockerfile and docs/metrics.md against the code: Kubernetes manifests
// decode strictly into the API types, configs pass regwarm's validation,
// every metric a rule, dashboard or doc names exists, and the external
// validators (promtool, docker-compose, systemd-analyze) accept the files.
package deploy_test

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
)

// root is the repository root, relative to this package's directory.
const root = ".."

// path joins elements below the repository root.
func path(elem ...string) string { return filepath.Join(append([]string{root}, elem...)...) }

func readFile(t *testing.T, elem ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(path(elem...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// requireTool returns the path of a command CI installs; its absence fails
// the test rather than skipping it, so that CI cannot pass without it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required (CI installs it, see .ci/run): %v", name, err)
	}
	return p
}

// run runs a command with a timeout and returns its combined output; a
// non-zero exit fails the test with that output.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// parseConfig validates a regwarm config file the way regwarm does.
func parseConfig(t *testing.T, data []byte, what string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(data)
	if err != nil {
		t.Fatalf("%s is not a valid regwarm config:\n%v", what, err)
	}
	return cfg
}

var (
	knownOnce  sync.Once
	knownNames map[string]bool
	knownBase  []string
	knownErr   string
)

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// knownMetrics returns every metric name regwarm exports, with the
// _bucket, _sum and _count series of histograms, and the base names.
func knownMetrics(t *testing.T) (map[string]bool, []string) {
	t.Helper()
	knownOnce.Do(func() { knownNames, knownBase, knownErr = collectMetrics() })
	if knownErr != "" {
		t.Fatal(knownErr)
	}
	return knownNames, knownBase
}

func collectMetrics() (map[string]bool, []string, string) {
	reg := prometheus.NewRegistry()
	set := metrics.New(reg, metrics.Labels{Registries: []string{"hub"}, Connectors: []string{"dockerhub"}})
	names := map[string]bool{}
	var base []string
	// Every field of the Set is a collector; describing it names it even
	// when no label set was initialised (so Gather would not show it).
	v := reflect.ValueOf(set).Elem()
	for i := range v.NumField() {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok {
			return nil, nil, "metrics.Set." + v.Type().Field(i).Name + " is not a prometheus.Collector"
		}
		ch := make(chan *prometheus.Desc, 4)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := fqNameRE.FindStringSubmatch(d.String())
			if m == nil {
				return nil, nil, "cannot read the name of " + d.String()
			}
			names[m[1]] = true
			base = append(base, m[1])
			switch c.(type) {
			case prometheus.Histogram, *prometheus.HistogramVec:
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[m[1]+s] = true
				}
			}
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		return nil, nil, "gather: " + err.Error()
	}
	for _, mf := range mfs {
		if !names[mf.GetName()] {
			return nil, nil, "gathered " + mf.GetName() + " but did not find it in metrics.Set"
		}
		if mf.GetType() == dto.MetricType_HISTOGRAM && !names[mf.GetName()+"_bucket"] {
			return nil, nil, mf.GetName() + " is a histogram but its field is not"
		}
	}
	slices.Sort(base)
	return names, base, ""
}

var metricRefRE = regexp.MustCompile(`\bregwarm_[a-z0-9_]+`)

// checkMetricRefs fails for every regwarm_ name in text that regwarm does
// not export; a name followed by * is a family and not checked.
func checkMetricRefs(t *testing.T, where, text string) {
	t.Helper()
	known, _ := knownMetrics(t)
	for _, loc := range metricRefRE.FindAllStringIndex(text, -1) {
		name := text[loc[0]:loc[1]]
		if strings.HasPrefix(text[loc[1]:], "*") {
			continue // a family such as regwarm_job_*
		}
		if !known[name] {
			t.Errorf("%s: unknown metric %s", where, name)
		}
	}
}

// buildDir holds the binary built from the Dockerfile's build line, shared
// by the tests that need a real binary.
var (
	buildDir  string
	buildOnce sync.Once
	buildBin  string
	buildOut  string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "regwarm-deploy-test")
	if err != nil {
		panic(err)
	}
	buildDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// testVersion is stamped into the test binary through -X main.version.
const testVersion = "deploy-test-1.2.3"

// dockerBuildLine returns the words of the Dockerfile's RUN line that
// builds regwarm.
func dockerBuildLine(t *testing.T) []string {
	t.Helper()
	for _, ins := range dockerfile(t) {
		if ins.cmd == "RUN" && strings.Contains(ins.args, "go build") {
			return shellWords(t, ins.args)
		}
	}
	t.Fatal("Dockerfile: no RUN line with go build")
	return nil
}

// builtBinary builds regwarm with exactly the flags of the Dockerfile's
// build line (VERSION set to testVersion, the output in a temporary
// directory) and returns its path.
func builtBinary(t *testing.T) string {
	t.Helper()
	words := dockerBuildLine(t)
	buildOnce.Do(func() {
		var env, args []string
		for i := 0; i < len(words); i++ {
			w := words[i]
			switch {
			case len(args) == 0 && strings.Contains(w, "="):
				env = append(env, w)
			case w == "-o" && i+1 < len(words):
				buildBin = filepath.Join(buildDir, "regwarm")
				args = append(args, "-o", buildBin)
				i++
			default:
				args = append(args, strings.ReplaceAll(w, "${VERSION}", testVersion))
			}
		}
		if len(args) < 2 || args[0] != "go" || args[1] != "build" {
			buildErr = &os.PathError{Op: "parse", Path: "Dockerfile", Err: os.ErrInvalid}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		buildOut, buildErr = string(out), err
	})
	if buildErr != nil {
		t.Fatalf("building with the Dockerfile's flags: %v\n%s", buildErr, buildOut)
	}
	return buildBin
}

// TestDockerfileBuild checks that the Dockerfile builds regwarm like `make
// build` does, and builds it that way.
func TestDockerfileBuild(t *testing.T) {
	t.Parallel()
	words := dockerBuildLine(t)
	line := strings.Join(words, " ")
	for _, want := range []string{"CGO_ENABLED=0", "go build", "-trimpath", "./cmd/regwarm"} {
		if !strings.Contains(line, want) {
			t.Errorf("Dockerfile build line %q lacks %q", line, want)
		}
	}
	ldflags := flagValue(words, "-ldflags")
	mk := string(readFile(t, "Makefile"))
	m := regexp.MustCompile(`(?m)^LDFLAGS\s*:?=\s*(.+)$`).FindStringSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile: no LDFLAGS")
	}
	norm := strings.NewReplacer("${VERSION}", "VERSION", "$(VERSION)", "VERSION")
	if got, want := norm.Replace(ldflags), norm.Replace(strings.TrimSpace(m[1])); got != want {
		t.Errorf("Dockerfile -ldflags %q, Makefile LDFLAGS %q", got, want)
	}
	if !strings.Contains(ldflags, "-X main.version=${VERSION}") {
		t.Errorf("Dockerfile -ldflags %q does not set main.version from VERSION", ldflags)
	}
	buildRE := regexp.MustCompile(`(?m)^build:.*\n\t(.+)$`)
	bm := buildRE.FindStringSubmatch(mk)
	if bm == nil {
		t.Fatal("Makefile: no build target")
	}
	for _, want := range []string{"-trimpath", "-ldflags '$(LDFLAGS)'", "./cmd/regwarm"} {
		if !strings.Contains(bm[1], want) {
			t.Errorf("Makefile build line %q lacks %q; the Dockerfile copies it", bm[1], want)
		}
	}

	bin := builtBinary(t)
	out := run(t, root, nil, bin, "version")
	if first, _, _ := strings.Cut(out, "\n"); first != "regwarm "+testVersion {
		t.Errorf("regwarm version printed %q, want %q: -X main.version did not take", first, "regwarm "+testVersion)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }() // read only
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked; the distroless static image needs CGO_ENABLED=0")
		}
	}
}

// TestDockerfileImage checks the image layout the deployments rely on.
func TestDockerfileImage(t *testing.T) {
	t.Parallel()
	ins := dockerfile(t)
	var froms, exposes []string
	args := map[string]string{}
	var entrypoint, cmd string
	var copiesConfig bool
	for _, in := range ins {
		switch in.cmd {
		case "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		case "FROM":
			froms = append(froms, in.args)
		case "EXPOSE":
			exposes = append(exposes, strings.Fields(in.args)...)
		case "ENTRYPOINT":
			entrypoint = in.args
		case "CMD":
			cmd = in.args
		case "RUN":
			copiesConfig = copiesConfig || strings.Contains(in.args, "deploy/container/regwarm.yaml /rootfs/etc/regwarm/regwarm.yaml")
		}
	}
	if len(froms) < 2 {
		t.Fatalf("Dockerfile: want a multi-stage build, got FROM %q", froms)
	}
	goMod := string(readFile(t, "go.mod"))
	gm := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(goMod)
	if gm == nil {
		t.Fatal("go.mod: no go line")
	}
	builder := strings.ReplaceAll(froms[0], "${GO_VERSION}", args["GO_VERSION"])
	if !strings.HasPrefix(builder, "golang:"+gm[1]+" ") && builder != "golang:"+gm[1] {
		t.Errorf("builder %q does not use Go %s of go.mod", builder, gm[1])
	}
	final := froms[len(froms)-1]
	if final != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("final stage %q, want gcr.io/distroless/static-debian12:nonroot", final)
	}
	if !slices.Equal(exposes, []string{"5000", "9466"}) {
		t.Errorf("EXPOSE %q, want 5000 9466", exposes)
	}
	if got := jsonWords(t, entrypoint); !slices.Equal(got, []string{"/regwarm"}) {
		t.Errorf("ENTRYPOINT %s, want [\"/regwarm\"]", entrypoint)
	}
	if got := jsonWords(t, cmd); !slices.Equal(got, []string{"run", "--config", "/etc/regwarm/regwarm.yaml"}) {
		t.Errorf("CMD %s, want run --config /etc/regwarm/regwarm.yaml", cmd)
	}
	if !copiesConfig {
		t.Error("the image does not get deploy/container/regwarm.yaml as its default config")
	}
	cfg := parseConfig(t, readFile(t, "deploy", "container", "regwarm.yaml"), "deploy/container/regwarm.yaml")
	if cfg.Serve.Listen != "0.0.0.0:5000" || cfg.Metrics.Listen != "0.0.0.0:9466" {
		t.Errorf("the image's config listens on %s and %s; the EXPOSEd ports need 0.0.0.0:5000 and 0.0.0.0:9466", cfg.Serve.Listen, cfg.Metrics.Listen)
	}
	if cfg.DataDir != "/var/lib/regwarm" {
		t.Errorf("the image's data_dir is %s, want the volume /var/lib/regwarm", cfg.DataDir)
	}

	// The build context must keep what the build needs.
	ignore := dockerignore(t)
	for _, p := range []string{"go.mod", "go.sum", "cmd/regwarm/main.go", "internal/config/config.go",
		"daemon/daemon.go", "jobs", "registryapi", "deploy/container/regwarm.yaml"} {
		if ignore(p) {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
	for _, p := range []string{".git", "bin/regwarm", "regwarm-data/store"} {
		if !ignore(p) {
			t.Errorf(".dockerignore keeps %s in the build context", p)
		}
	}
}

type instruction struct{ cmd, args string }

// dockerfile returns the Dockerfile's instructions, continuation lines
// joined and comments dropped.
func dockerfile(t *testing.T) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	for _, line := range strings.Split(string(readFile(t, "Dockerfile")), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

// shellWords splits a simple shell command line into words, honouring
// double and single quotes; it stops at && or ;.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur bytes.Buffer
	var quote rune
	inWord := false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	for i, w := range words {
		if w == "&&" || w == ";" {
			return words[:i]
		}
	}
	return words
}

// jsonWords decodes an exec-form (JSON array) instruction argument.
func jsonWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	if err := json.Unmarshal([]byte(s), &words); err != nil {
		t.Errorf("%q is not in exec form: %v", s, err)
	}
	return words
}

// flagValue returns the word after flag in words.
func flagValue(words []string, flag string) string {
	for i, w := range words {
		if w == flag && i+1 < len(words) {
			return words[i+1]
		}
	}
	return ""
}

// dockerignore returns whether .dockerignore excludes a context path:
// patterns in order, the last match wins, "!" re-includes, and a pattern
// matching a parent directory matches everything below it.
func dockerignore(t *testing.T) func(string) bool {
	t.Helper()
	var pats []string
	for _, line := range strings.Split(string(readFile(t, ".dockerignore")), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			pats = append(pats, line)
		}
	}
	return func(p string) bool {
		excluded := false
		for _, pat := range pats {
			neg := strings.HasPrefix(pat, "!")
			pat = strings.TrimSuffix(strings.TrimPrefix(pat, "!"), "/")
			for q := p; q != "."; q = filepath.Dir(q) {
				if ok, _ := filepath.Match(pat, q); ok {
					excluded = !neg
					break
				}
			}
		}
		return excluded
	}
}
