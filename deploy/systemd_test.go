package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// unit is a systemd unit file: section → key → values in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, data []byte) unit {
	t.Helper()
	u := unit{}
	section := ""
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("line %d: %q is not key=value in a section", i+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// last returns a key's effective (last) value.
func (u unit) last(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ file, verb string }{
		{"regwarm.service", "run"},
		{"regwarm-serve.service", "serve"},
		{"regwarm-worker.service", "worker"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			u := parseUnit(t, readFile(t, "deploy", "systemd", tc.file))
			exec := strings.Fields(u.last("Service", "ExecStart"))
			if len(exec) < 2 || exec[0] != "/usr/local/bin/regwarm" || exec[1] != tc.verb || !slices.Contains(exec, "--config") {
				t.Errorf("ExecStart %q, want /usr/local/bin/regwarm %s --config …", exec, tc.verb)
			}
			want := map[string]string{
				"StateDirectory":  "regwarm",
				"ProtectSystem":   "strict",
				"NoNewPrivileges": "yes",
				"Restart":         "on-failure",
			}
			for k, v := range want {
				if got := u.last("Service", k); got != v {
					t.Errorf("%s=%q, want %q", k, got, v)
				}
			}
			if u.last("Service", "User") == "" && u.last("Service", "DynamicUser") != "yes" {
				t.Error("set User= or DynamicUser=yes")
			}
			if !slices.Contains(strings.Fields(u.last("Service", "ReadWritePaths")), "/var/lib/regwarm") {
				t.Error("ReadWritePaths must include /var/lib/regwarm")
			}
			if env := u.last("Service", "EnvironmentFile"); !strings.HasSuffix(env, "/etc/regwarm/regwarm.env") {
				t.Errorf("EnvironmentFile=%q, want /etc/regwarm/regwarm.env for connector secrets", env)
			}
			stop, err := time.ParseDuration(u.last("Service", "TimeoutStopSec"))
			if err != nil || stop < 30*time.Second {
				t.Errorf("TimeoutStopSec=%q: want at least 30s (regwarm drains for 20 s)", u.last("Service", "TimeoutStopSec"))
			}
			if u.last("Install", "WantedBy") != "multi-user.target" {
				t.Error("WantedBy=multi-user.target missing")
			}
		})
	}
	parseConfig(t, readFile(t, "deploy", "systemd", "regwarm.yaml"), "deploy/systemd/regwarm.yaml")
}

// TestSystemdAnalyzeVerify runs systemd-analyze verify on the units, with
// ExecStart pointing at a real regwarm binary. systemd is not part of CI's
// required tools: without systemd-analyze the test is skipped.
func TestSystemdAnalyzeVerify(t *testing.T) {
	t.Parallel()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not on PATH (Debian package systemd; .ci/run installs it)")
	}
	bin := builtBinary(t)
	dir := t.TempDir()
	var units []string
	for _, f := range []string{"regwarm.service", "regwarm-serve.service", "regwarm-worker.service"} {
		data := strings.ReplaceAll(string(readFile(t, "deploy", "systemd", f)), "/usr/local/bin/regwarm", bin)
		if err := os.WriteFile(filepath.Join(dir, f), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, filepath.Join(dir, f))
	}
	out := run(t, dir, nil, sa, append([]string{"verify", "--man=no"}, units...)...)
	// verify exits 0 on warnings such as unknown keys: any output is a finding.
	if strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify:\n%s", out)
	}
}

// TestSystemdNATSConfig checks the single-host NATS config with the server
// itself, where nats-server is installed (CI installs it).
func TestSystemdNATSConfig(t *testing.T) {
	t.Parallel()
	conf := string(readFile(t, "deploy", "systemd", "nats-server.conf"))
	if !strings.Contains(conf, "jetstream {") {
		t.Error("nats-server.conf does not enable JetStream")
	}
	ns, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatal("nats-server not on PATH (.ci/run installs it)")
	}
	run(t, path("deploy", "systemd"), []string{"REGWARM_NATS_PASSWORD=x"}, ns, "-c", "nats-server.conf", "-t")
}
