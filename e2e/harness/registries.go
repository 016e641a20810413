package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"go.yaml.in/yaml/v3"
)

// Targets for StartRegwarm.
const (
	// TargetRegwarm runs the regwarm binary built by Main.
	TargetRegwarm = "regwarm"
	// TargetDockerRegistry runs Debian's docker-registry in regwarm's place,
	// behind a small proxy that sends unprefixed /v2/<repo> paths to the
	// default registry. It checks tests and harness while regwarm cannot.
	TargetDockerRegistry = "docker-registry"
)

// Target selects what StartRegwarm starts. Set REGWARM_E2E_TARGET=docker-registry
// (or change the default here) to run the suite against the stand-in.
var Target = envOr("REGWARM_E2E_TARGET", TargetRegwarm)

// ReadyTimeout bounds how long a server may take to become ready.
const ReadyTimeout = 30 * time.Second

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

var (
	regwarmBin      string
	regwarmBuildErr error
)

// Main builds the regwarm binary once (or takes REGWARM_BIN), runs the
// tests and removes the build. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
func Main(m *testing.M) int {
	if bin := os.Getenv("REGWARM_BIN"); bin != "" {
		regwarmBin = bin
		return m.Run()
	}
	if Target != TargetRegwarm {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "regwarm-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }() // build scratch; a leftover is harmless
	start := time.Now()
	regwarmBin, regwarmBuildErr = BuildRegwarm(dir)
	if regwarmBuildErr != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", regwarmBuildErr)
	} else {
		fmt.Fprintf(os.Stderr, "e2e: built %s in %.1fs\n", regwarmBin, time.Since(start).Seconds())
	}
	return m.Run()
}

// BuildRegwarm builds ./cmd/regwarm into dir and returns the binary's path.
func BuildRegwarm(dir string) (string, error) {
	bin := filepath.Join(dir, "regwarm")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/regwarm/regwarm/cmd/regwarm").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/regwarm: %v\n%s", err, out)
	}
	return bin, nil
}

// RegwarmBinary returns the binary built by Main; it fails the test when
// the build failed.
func RegwarmBinary(t testing.TB) string {
	t.Helper()
	if regwarmBuildErr != nil {
		t.Fatalf("regwarm binary: %v", regwarmBuildErr)
	}
	if regwarmBin == "" {
		t.Fatal("regwarm binary: not built; call harness.Main from TestMain or set REGWARM_BIN")
	}
	return regwarmBin
}

// ConfigHeader starts a regwarm config: every listener on a free loopback
// port and the data directory in the test's temporary directory. Append a
// `registries:` list (and connectors) to it.
const ConfigHeader = `version: 1
data_dir: "{{.DataDir}}"
log: {level: debug, format: text}
serve: {listen: "{{.Addr}}"}
metrics: {listen: "{{.MetricsAddr}}"}
nats: {embedded: {listen: "{{.NATSAddr}}"}}
`

// ConfigVars are the values StartRegwarm fills into a config template.
type ConfigVars struct {
	Addr        string // serve.listen
	MetricsAddr string // metrics.listen
	NATSAddr    string // nats.embedded.listen
	DataDir     string // data_dir
}

// Regwarm is a running regwarm process.
type Regwarm struct {
	*Process
	ConfigVars
	// Mode is "serve" or "run".
	Mode string
	// ConfigPath is the rendered config file.
	ConfigPath string

	t testing.TB
}

// StartRegwarm writes cfgYAML (a text/template over ConfigVars, usually
// ConfigHeader plus registries) to a file, starts `regwarm <mode> --config
// FILE` and waits until /readyz on the metrics listener (when the config
// uses {{.MetricsAddr}}) and /v2/ on the API answer.
func StartRegwarm(t testing.TB, mode, cfgYAML string) *Regwarm {
	t.Helper()
	return StartRegwarmEnv(t, mode, cfgYAML, nil)
}

// StartRegwarmEnv is StartRegwarm with env ("NAME=value") added to the
// process's environment (credentials the config names by variable).
func StartRegwarmEnv(t testing.TB, mode, cfgYAML string, env []string) *Regwarm {
	t.Helper()
	if mode != "serve" && mode != "run" {
		t.Fatalf("StartRegwarm: mode %q, want serve or run", mode)
	}
	dir := t.TempDir()
	vars := ConfigVars{Addr: FreeAddr(t), MetricsAddr: FreeAddr(t), NATSAddr: FreeAddr(t), DataDir: filepath.Join(dir, "data")}
	cfg, err := renderConfig(cfgYAML, vars)
	if err != nil {
		t.Fatalf("StartRegwarm: config template: %v", err)
	}
	if !bytes.Contains(cfg, []byte(vars.Addr)) {
		t.Fatal("StartRegwarm: the config must use {{.Addr}} for serve.listen")
	}
	if !bytes.Contains(cfg, []byte(vars.MetricsAddr)) {
		vars.MetricsAddr = "" // no metrics listener to wait for
	}
	r := &Regwarm{ConfigVars: vars, Mode: mode, ConfigPath: filepath.Join(dir, "regwarm.yaml"), t: t}
	if err := os.WriteFile(r.ConfigPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if Target == TargetDockerRegistry {
		r.Process = startStandin(t, cfg, vars)
		r.MetricsAddr = ""
	} else {
		r.Process = StartProcess(t, "regwarm-"+mode, env, RegwarmBinary(t), mode, "--config", r.ConfigPath)
	}
	r.waitReady()
	return r
}

// renderConfig executes cfgYAML, a text/template over ConfigVars in which
// a missing key is an error.
func renderConfig(cfgYAML string, vars ConfigVars) ([]byte, error) {
	tmpl, err := template.New("config").Option("missingkey=error").Parse(cfgYAML)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, vars); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// waitReady waits for /readyz (when there is a metrics listener) and /v2/.
func (r *Regwarm) waitReady() {
	r.t.Helper()
	if r.MetricsAddr != "" {
		waitStart(r.t, r.Process, "http://"+r.MetricsAddr+"/readyz", ReadyTimeout, http.StatusOK)
	}
	waitStart(r.t, r.Process, "http://"+r.Addr+"/v2/", ReadyTimeout, http.StatusOK, http.StatusUnauthorized)
}

// Start starts regwarm again after Stop or Kill (same config, same data)
// and waits until it is ready.
func (r *Regwarm) Start() {
	r.t.Helper()
	if err := r.Process.Start(); err != nil {
		r.t.Fatalf("restart %s: %v", r.Name, err)
	}
	r.waitReady()
}

// URL returns the API's base URL, "http://ADDR".
func (r *Regwarm) URL() string { return "http://" + r.Addr }

// startStandin runs docker-registry on a free port behind a reverse proxy
// listening on vars.Addr, which maps unprefixed repositories to the
// config's default registry (as regwarm does).
func startStandin(t testing.TB, cfg []byte, vars ConfigVars) *Process {
	t.Helper()
	var parsed struct {
		Registries []struct {
			Name    string `yaml:"name"`
			Default bool   `yaml:"default"`
		} `yaml:"registries"`
	}
	if err := yaml.Unmarshal(cfg, &parsed); err != nil {
		t.Fatalf("stand-in: parse config: %v", err)
	}
	names := map[string]bool{}
	def := ""
	for _, r := range parsed.Registries {
		names[r.Name] = true
		if r.Default {
			def = r.Name
		}
	}
	up := StartDockerRegistry(t, UpstreamOptions{RootDir: filepath.Join(vars.DataDir, "standin")})
	target, _ := url.Parse(up.URL())
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // docker-registry builds Location URLs from it
			pr.Out.URL.Path = standinPath(pr.In.URL.Path, names, def)
			pr.Out.URL.RawPath = ""
		},
		FlushInterval: -1,
	}
	l, err := net.Listen("tcp", vars.Addr)
	if err != nil {
		t.Fatalf("stand-in: %v", err)
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }() // ends with ErrServerClosed
	t.Cleanup(func() { _ = srv.Close() })
	return up.Process
}

// standinPath prefixes /v2/<repo>/… with the default registry when its
// first segment names no registry.
func standinPath(p string, names map[string]bool, def string) string {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok || rest == "" || rest == "_catalog" || def == "" {
		return p
	}
	first, _, _ := strings.Cut(rest, "/")
	if names[first] {
		return p
	}
	return "/v2/" + def + "/" + rest
}

// UpstreamOptions configure StartDockerRegistry.
type UpstreamOptions struct {
	// RootDir is the filesystem storage root; default a new t.TempDir.
	RootDir string
	// ProxyRemoteURL, when set, runs docker-registry as a pull-through
	// cache of that URL.
	ProxyRemoteURL string
	// Addr is the listen address; default a free loopback port.
	Addr string
	// NotifyURL, when set, receives the registry's notifications (a
	// `notifications: endpoints:` entry) with NotifyHeaders.
	NotifyURL     string
	NotifyHeaders map[string]string
}

// Upstream is a running Debian docker-registry (distribution 2.8) with
// filesystem storage, deletes enabled and an access log.
type Upstream struct {
	*Process
	// Addr is the listen address, 127.0.0.1:PORT.
	Addr string
	// RootDir is the storage root.
	RootDir string

	t testing.TB
}

// StartDockerRegistry starts docker-registry on a free port and waits for /v2/.
func StartDockerRegistry(t testing.TB, opts UpstreamOptions) *Upstream {
	t.Helper()
	dir := t.TempDir()
	if opts.RootDir == "" {
		opts.RootDir = filepath.Join(dir, "storage")
	}
	if opts.Addr == "" {
		opts.Addr = FreeAddr(t)
	}
	u := &Upstream{Addr: opts.Addr, RootDir: opts.RootDir, t: t}
	cfg := fmt.Sprintf(`version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage:
  filesystem: {rootdirectory: %q}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http:
  addr: %q
  secret: regwarm-e2e-not-a-secret
`, opts.RootDir, u.Addr)
	if opts.ProxyRemoteURL != "" {
		cfg += fmt.Sprintf("proxy: {remoteurl: %q}\n", opts.ProxyRemoteURL)
	}
	if opts.NotifyURL != "" {
		cfg += notificationsConfig(opts.NotifyURL, opts.NotifyHeaders)
	}
	path := filepath.Join(dir, "docker-registry.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	u.Process = StartProcess(t, "docker-registry", nil, "docker-registry", "serve", path)
	waitStart(t, u.Process, u.URL()+"/v2/", ReadyTimeout, http.StatusOK)
	return u
}

// URL returns "http://ADDR".
func (u *Upstream) URL() string { return "http://" + u.Addr }

// Start starts the registry again after Stop (same port, same storage) and
// waits for /v2/.
func (u *Upstream) Start() {
	u.t.Helper()
	if err := u.Process.Start(); err != nil {
		u.t.Fatalf("restart docker-registry: %v", err)
	}
	waitStart(u.t, u.Process, u.URL()+"/v2/", ReadyTimeout, http.StatusOK)
}

// Request is one line of the registry's access log.
type Request struct {
	Method string
	Path   string // without the query
	Query  string // raw query, without "?"
	Status int
	Agent  string // User-Agent; empty when the line has none
}

// accessLine matches docker-registry's combined-format access log lines
// and, when there is one, their User-Agent:
// 127.0.0.1 - - [27/Nov/2026:03:31:37 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
var accessLine = regexp.MustCompile(`^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (?:\S+ "[^"]*" "(.*)"\s*$)?`)

// Requests returns every request the registry has logged so far, across
// restarts, in order.
func (u *Upstream) Requests() []Request {
	u.t.Helper()
	reqs, err := ParseAccessLog(u.LogPath)
	if err != nil {
		u.t.Fatalf("docker-registry access log: %v", err)
	}
	return reqs
}

// CountRequests counts logged requests with the given method whose path
// ends with suffix (e.g. "/blobs/sha256:…").
func (u *Upstream) CountRequests(method, suffix string) int {
	n := 0
	for _, r := range u.Requests() {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			n++
		}
	}
	return n
}

// ParseAccessLog reads the combined-format access lines of a docker-registry log.
func ParseAccessLog(path string) ([]Request, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseAccessLog(f)
}

func parseAccessLog(f io.Reader) ([]Request, error) {
	var reqs []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		m := accessLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		status, _ := strconv.Atoi(m[3])
		path, query, _ := strings.Cut(m[2], "?")
		reqs = append(reqs, Request{Method: m[1], Path: path, Query: query, Status: status, Agent: m[4]})
	}
	return reqs, sc.Err()
}

// notificationsConfig is docker-registry's notifications section: one
// endpoint, quick retries.
func notificationsConfig(url string, headers map[string]string) string {
	var h strings.Builder
	if len(headers) > 0 {
		h.WriteString("      headers:\n")
	}
	for k, v := range headers {
		fmt.Fprintf(&h, "        %s: [%q]\n", k, v)
	}
	return fmt.Sprintf(`notifications:
  endpoints:
    - name: regwarm
      url: %q
%s      timeout: 2s
      threshold: 3
      backoff: 500ms
`, url, h.String())
}
