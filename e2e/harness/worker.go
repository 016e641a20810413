package harness

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// Worker is a running `regwarm worker`. It has no API listener; its
// ConfigVars.Addr is rendered into the config but unused.
type Worker struct {
	*Process
	ConfigVars
	// ConfigPath is the rendered config file.
	ConfigPath string

	t testing.TB
}

// StartWorker renders cfgYAML (a text/template over ConfigVars, which must
// set nats.url) and starts `regwarm worker --config FILE`. Non-empty fields
// of vars are kept, so workers can share a serve's data directory
// (vars.DataDir = rw.DataDir); the others get free ports or a new
// directory. It waits until /readyz answers 200, which needs the worker's
// JetStream setup to have succeeded. Workers need the regwarm target.
func StartWorker(t testing.TB, name, cfgYAML string, vars ConfigVars) *Worker {
	t.Helper()
	return StartWorkerEnv(t, name, cfgYAML, vars, nil)
}

// StartWorkerEnv is StartWorker with env ("NAME=value") added to the
// process's environment.
func StartWorkerEnv(t testing.TB, name, cfgYAML string, vars ConfigVars, env []string) *Worker {
	t.Helper()
	if Target != TargetRegwarm {
		t.Fatalf("StartWorker: the %s stand-in has no worker", Target)
	}
	dir := t.TempDir()
	if vars.Addr == "" {
		vars.Addr = FreeAddr(t)
	}
	if vars.MetricsAddr == "" {
		vars.MetricsAddr = FreeAddr(t)
	}
	if vars.NATSAddr == "" {
		vars.NATSAddr = FreeAddr(t)
	}
	if vars.DataDir == "" {
		vars.DataDir = filepath.Join(dir, "data")
	}
	cfg, err := renderConfig(cfgYAML, vars)
	if err != nil {
		t.Fatalf("StartWorker: config template: %v", err)
	}
	if !bytes.Contains(cfg, []byte(vars.MetricsAddr)) {
		t.Fatal("StartWorker: the config must use {{.MetricsAddr}} for metrics.listen")
	}
	w := &Worker{ConfigVars: vars, ConfigPath: filepath.Join(dir, "regwarm.yaml"), t: t}
	if err := os.WriteFile(w.ConfigPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	w.Process = StartProcess(t, name, env, RegwarmBinary(t), "worker", "--config", w.ConfigPath)
	waitStart(t, w.Process, w.readyURL(), ReadyTimeout, http.StatusOK)
	return w
}

func (w *Worker) readyURL() string { return "http://" + w.MetricsAddr + "/readyz" }

// Start starts the worker again after Stop or Kill and waits until it is
// ready.
func (w *Worker) Start() {
	w.t.Helper()
	if err := w.Process.Start(); err != nil {
		w.t.Fatalf("restart %s: %v", w.Name, err)
	}
	waitStart(w.t, w.Process, w.readyURL(), ReadyTimeout, http.StatusOK)
}
