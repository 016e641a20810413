package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/config"
)

// regwarm runs the CLI in-process and returns its exit code and output.
func regwarm(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = realMain(args, &o, &e)
	return code, o.String(), e.String()
}

// TestHelp: -h exits 0 with the command's usage on stdout, and each
// command lists only the flags it uses.
func TestHelp(t *testing.T) {
	t.Parallel()
	all := []string{"config", "listen", "metrics-listen", "data-dir", "nats-url", "log-level",
		"format", "output", "repair", "timeout", "probe"}
	for _, tc := range []struct {
		args  []string
		flags []string
	}{
		{[]string{"run", "-h"}, []string{"config", "listen", "metrics-listen", "data-dir", "nats-url", "log-level"}},
		{[]string{"serve", "--help"}, []string{"config", "listen", "metrics-listen", "data-dir", "nats-url", "log-level"}},
		{[]string{"worker", "-h"}, []string{"config", "metrics-listen", "data-dir", "nats-url", "log-level"}},
		{[]string{"sync", "-h"}, []string{"config", "nats-url", "timeout"}},
		{[]string{"scan", "-h"}, []string{"config", "data-dir", "log-level", "format", "output"}},
		{[]string{"verify", "-h"}, []string{"config", "data-dir", "log-level", "format", "output", "repair"}},
		{[]string{"config", "check", "-h"}, []string{"config", "listen", "metrics-listen", "data-dir", "nats-url", "log-level", "probe"}},
		{[]string{"migrate", "-h"}, []string{"config", "data-dir", "log-level"}},
		{[]string{"version", "-h"}, nil},
		{[]string{"config", "-h"}, nil},
	} {
		code, out, errOut := regwarm(tc.args...)
		name := strings.Join(tc.args, " ")
		if code != 0 || !strings.Contains(out, "usage: regwarm "+tc.args[0]) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 0 and usage on stdout", name, code, out, errOut)
			continue
		}
		for _, f := range all {
			listed := strings.Contains(out, "  -"+f+" ") || strings.Contains(out, "  -"+f+"\n")
			if want := slices.Contains(tc.flags, f); listed != want {
				t.Errorf("%s: flag -%s listed %v, want %v\n%s", name, f, listed, want, out)
			}
		}
	}
	// Overrides a command does not use are still accepted, with a note.
	if code, _, errOut := regwarm("scan", "--listen", ":1", "--data-dir", t.TempDir(), "--log-level", "warn"); code != 0 ||
		!strings.Contains(errOut, "--listen has no effect here") {
		t.Errorf("scan --listen: exit %d, %q; want 0 with a note naming the flag", code, errOut)
	}
	if code, _, errOut := regwarm("scan", "--bogus"); code != 2 || !strings.Contains(errOut, "-bogus") {
		t.Errorf("scan --bogus: exit %d, %q; want 2 naming the flag", code, errOut)
	}
	if code, out, _ := regwarm("version"); code != 0 || !strings.HasPrefix(out, "regwarm ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

func TestParseFlagsInterleaved(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		images  []string
		timeout time.Duration
		code    int
		ok      bool
	}{
		{[]string{"a:v1", "--timeout", "5s", "b:v1"}, []string{"a:v1", "b:v1"}, 5 * time.Second, 0, true},
		{[]string{"--timeout=7s", "a:v1"}, []string{"a:v1"}, 7 * time.Second, 0, true},
		{[]string{"a:v1", "--", "--timeout", "b"}, []string{"a:v1", "--timeout", "b"}, time.Minute, 0, true},
		{[]string{"a:v1", "--bogus"}, nil, time.Minute, 2, false},
		{[]string{"a:v1", "-h"}, nil, time.Minute, 0, false},
		{nil, nil, time.Minute, 0, true},
	} {
		fs := newFlagSet("sync", "regwarm sync", "")
		timeout := fs.Duration("timeout", time.Minute, "")
		var out, errOut bytes.Buffer
		images, code, ok := parseFlags(fs, tc.args, true, &out, &errOut)
		if !slices.Equal(images, tc.images) || code != tc.code || ok != tc.ok || *timeout != tc.timeout {
			t.Errorf("parseFlags(%q) = %q, %d, %v, timeout %v; want %q, %d, %v, %v",
				tc.args, images, code, ok, *timeout, tc.images, tc.code, tc.ok, tc.timeout)
		}
	}
	fs := newFlagSet("scan", "regwarm scan", "")
	var out, errOut bytes.Buffer
	if _, code, ok := parseFlags(fs, []string{"stray"}, false, &out, &errOut); ok || code != 2 || !strings.Contains(errOut.String(), `"stray"`) {
		t.Errorf("a stray argument: code %d ok %v, %q", code, ok, errOut.String())
	}
}

func TestQualifyImage(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: hub, default: true, connectors: [up]}
  - {name: local, push: true}
connectors:
  - {name: up, url: "http://127.0.0.1:1", host: lab.local}
`))
	if err != nil {
		t.Fatal(err)
	}
	noDefault, err := config.Parse([]byte("version: 1\nregistries: [{name: local, push: true}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	const d = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		cfg      *config.Config
		in, want string
	}{
		{cfg, "app:v1", "hub/app:v1"},
		{cfg, "app", "hub/app"},
		{cfg, "app@" + d, "hub/app@" + d},
		{cfg, "library/alpine:3", "hub/library/alpine:3"},
		{cfg, "hub/library/alpine:3", "hub/library/alpine:3"},
		{cfg, "local/app:v1", "local/app:v1"},
		{cfg, "lab.local/app:v1", "lab.local/app:v1"},
		{cfg, "localhost/app:v1", "localhost/app:v1"},
		{cfg, "127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1"},
		{noDefault, "app:v1", "app:v1"},
		{config.Default(), "app:v1", "local/app:v1"},
	} {
		if got := qualifyImage(tc.cfg, tc.in); got != tc.want {
			t.Errorf("qualifyImage(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	good, bad := syncArgs(cfg, []string{"app:v1", "BAD IMAGE", "http://x/y", "local/x:v1"})
	if !slices.Equal(good, []string{"hub/app:v1", "local/x:v1"}) || len(bad) != 2 || bad[0].image != "BAD IMAGE" || bad[1].image != "http://x/y" {
		t.Errorf("syncArgs: good %q, bad %v", good, bad)
	}
}

// TestSyncCarriesOnPastBadArguments: each bad image gets an error line and
// exit 1; none of them stops the batch before the good ones are tried (here
// the good one fails to connect: exit 2).
func TestSyncCarriesOnPastBadArguments(t *testing.T) {
	t.Parallel()
	code, out, errOut := regwarm("sync", "BAD IMAGE", "http://127.0.0.1:1/x", "--timeout", "1s")
	if code != 1 || !strings.Contains(out, `error   BAD IMAGE:`) || !strings.Contains(out, "error   http://127.0.0.1:1/x:") {
		t.Errorf("only bad images: exit %d, want 1 with a line for each\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, _ = regwarm("sync", "BAD IMAGE", "app:v1", "--nats-url", "nats://127.0.0.1:1", "--timeout", "1s")
	if code != 2 || !strings.Contains(out, `error   BAD IMAGE:`) || !strings.Contains(out, "regwarm sync:") {
		t.Errorf("a bad image and no NATS: exit %d, want 2 after trying the good one\n%s", code, out)
	}
}

// TestOneShotWithoutConfig: scan and verify use the defaults of run when
// --config is absent.
func TestOneShotWithoutConfig(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"scan", "verify"} {
		dir := t.TempDir()
		code, out, errOut := regwarm(cmd, "--data-dir", dir, "--format", "json", "--log-level", "warn")
		if code != 0 || !strings.Contains(out, `"job"`) {
			t.Errorf("%s without --config: exit %d\nstdout:\n%s\nstderr:\n%s", cmd, code, out, errOut)
		}
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "regwarm.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigCheckListsEverything: decode errors, validation problems, a
// missing version and unset credentials come in one run, the last marked.
func TestConfigCheckListsEverything(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, `log: {levle: debug, format: xml}
registries:
  - {name: hub, default: true, connectors: [up]}
connectors:
  - {name: up, url: "http://127.0.0.1:1", username: u, password_env: REGWARM_TEST_CHECK_UNSET, usename: x}
worker: {concurrency: many}
`)
	code, out, errOut := regwarm("config", "check", "--config", p)
	if code != 2 || out != "" {
		t.Fatalf("exit %d, stdout %q; want 2 and nothing on stdout", code, out)
	}
	for _, want := range []string{
		"log.levle: unknown key",
		"connectors[0].usename: unknown key",
		`worker.concurrency: "many": want an integer`,
		`log.format: "xml": must be one of`,
		"version: required",
		`[environment] connectors[0].password_env: "REGWARM_TEST_CHECK_UNSET": environment variable is not set`,
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("config check output lacks %q:\n%s", want, errOut)
		}
	}
	if code, out, errOut := regwarm("config", "check", "--data-dir", t.TempDir()); code != 0 || !strings.Contains(out, "valid") {
		t.Errorf("config check without --config: exit %d\n%s%s", code, out, errOut)
	}
}

// TestDaemonRefusesUnsetSecret: run, serve and worker exit 2 at once,
// naming the variable, instead of starting and failing later.
func TestDaemonRefusesUnsetSecret(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, `version: 1
data_dir: `+t.TempDir()+`
serve: {listen: "127.0.0.1:0"}
metrics: {listen: "127.0.0.1:0"}
nats: {url: "nats://127.0.0.1:1", embedded: {listen: "127.0.0.1:0"}}
registries: [{name: hub, default: true, connectors: [up]}]
connectors: [{name: up, url: "http://127.0.0.1:1", username: u, password_env: REGWARM_TEST_DAEMON_UNSET}]
`)
	for _, mode := range []string{"serve", "worker"} {
		done := make(chan [3]any, 1)
		go func() {
			code, out, errOut := regwarm(mode, "--config", p)
			done <- [3]any{code, out, errOut}
		}()
		select {
		case r := <-done:
			if r[0] != 2 || !strings.Contains(r[2].(string), "REGWARM_TEST_DAEMON_UNSET") {
				t.Errorf("%s: exit %v, stderr %q; want 2 naming the variable", mode, r[0], r[2])
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s started with an unset password_env", mode)
		}
	}
}

// TestConfigCheckProbe: --probe tells a registry from a web server.
func TestConfigCheckProbe(t *testing.T) {
	t.Parallel()
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("<html>not found</html>"))
	}))
	defer web.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
		_, _ = w.Write([]byte("{}"))
	}))
	defer reg.Close()
	p := writeConfig(t, `version: 1
registries: [{name: hub, default: true, connectors: [web, reg]}]
connectors:
  - {name: web, url: "`+web.URL+`"}
  - {name: reg, url: "`+reg.URL+`"}
`)
	code, out, errOut := regwarm("config", "check", "--config", p, "--probe")
	if code != 2 || !strings.Contains(out, "connector web: NOT A REGISTRY") || !strings.Contains(out, "connector reg: "+reg.URL+" answers as a registry") {
		t.Errorf("probe: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if code, out, _ := regwarm("config", "check", "--config", p); code != 0 || strings.Contains(out, "probe") {
		t.Errorf("without --probe: exit %d, %s", code, out)
	}
}
