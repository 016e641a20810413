package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// runConfig writes a `regwarm run` config with every listener on addrs of
// the caller's choosing and returns its path.
func runConfig(t *testing.T, dataDir, natsAddr string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "regwarm.yaml")
	writeFile(t, path, fmt.Sprintf(`version: 1
data_dir: %q
serve: {listen: %q}
metrics: {listen: %q}
nats: {embedded: {listen: %q}}
registries:
  - {name: local, default: true, push: true}
`, dataDir, harness.FreeAddr(t), harness.FreeAddr(t), natsAddr))
	return path
}

// TestRunRefusesSecondOnSameDataDir: a second `regwarm run` on the data
// directory of a running one exits at once, naming the first one's pid,
// and the first keeps serving.
func TestRunRefusesSecondOnSameDataDir(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	rw := harness.StartRegwarm(t, "run", coreConfig)
	start := time.Now()
	r := runRegwarmFor(t, 10*time.Second, "run", "--config", runConfig(t, rw.DataDir, harness.FreeAddr(t)))
	r.wantCode(t, 1)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the second regwarm run took %s to give up", d)
	}
	for _, want := range []string{rw.DataDir, "in use by another regwarm process", fmt.Sprintf("pid %d", rw.Pid())} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the second regwarm run's error does not say %q:\n%s", want, r.stderr)
		}
	}
	if s := httpStatus(t, "GET", rw.URL()+"/v2/"); s != 200 {
		t.Errorf("the first regwarm: /v2/ %d after the second one tried", s)
	}
}

// TestRunEmbeddedNATSFailsFast: a busy embedded NATS port and a store
// directory that cannot be created stop `regwarm run` within 3 s with the
// NATS server's own error, not after 15 s with a guess.
func TestRunEmbeddedNATSFailsFast(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = busy.Close() }() // only holds the port
	fileAsStore := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(fileAsStore, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(fileAsStore, "nats"), "not a directory")
	for _, tc := range []struct {
		name, dataDir, natsAddr, want string
	}{
		{"busy port", filepath.Join(t.TempDir(), "data"), busy.Addr().String(), "address already in use"},
		{"store is a file", fileAsStore, harness.FreeAddr(t), "storage directory is not a directory"},
	} {
		start := time.Now()
		r := runRegwarmFor(t, 20*time.Second, "run", "--config", runConfig(t, tc.dataDir, tc.natsAddr))
		r.wantCode(t, 1)
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: regwarm run took %s to fail", tc.name, d)
		}
		if !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, tc.natsAddr) {
			t.Errorf("%s: the error does not say %q and name %s:\n%s", tc.name, tc.want, tc.natsAddr, r.stderr)
		}
	}
}

// TestNATSErrorsNameTheirCause: `regwarm sync` and serve name the NATS
// URL they could not reach and the dial error (never a password in the
// URL), and a process shutting down logs no NATS retries on its way out.
func TestNATSErrorsNameTheirCause(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	r := runRegwarmCLI(t, "sync", "--nats-url", "nats://127.0.0.1:1", "local/x:v1")
	r.wantCode(t, 2)
	if out := r.stdout + r.stderr; !strings.Contains(out, "nats://127.0.0.1:1") || !strings.Contains(out, "connection refused") {
		t.Errorf("regwarm sync to a closed port does not name the URL and the cause:\n%s", out)
	}
	r = runRegwarmCLI(t, "sync", "--nats-url", "nats://bob:s3cret@127.0.0.1:1", "local/x:v1")
	if out := r.stdout + r.stderr; strings.Contains(out, "s3cret") || !strings.Contains(out, "127.0.0.1:1") {
		t.Errorf("regwarm sync with credentials in the URL:\n%s", out)
	}

	// serve keeps trying an unreachable NATS and says why.
	unreachable := fmt.Sprintf("nats://127.0.0.1:%d", harness.FreePort(t))
	cfg := runConfig(t, filepath.Join(t.TempDir(), "data"), harness.FreeAddr(t))
	serve := harness.StartProcess(t, "regwarm-serve", nil, harness.RegwarmBinary(t), "serve", "--config", cfg, "--nats-url", unreachable)
	harness.Eventually(t, 15*time.Second, "serve logs why NATS is not reachable", func() error {
		log := serve.Log()
		if !strings.Contains(log, "nats not reachable") || !strings.Contains(log, unreachable) || !strings.Contains(log, "connection refused") {
			return errors.New("no `nats not reachable` line with the URL and `connection refused`")
		}
		return nil
	})

	// Shutting down while NATS is unreachable logs no retry of the setup.
	if err := serve.Stop(); err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(serve.Log(), "shutting down")
	if strings.Contains(after, "retrying") || strings.Contains(after, "context canceled") {
		t.Errorf("serve logs NATS retries on its way out:\n%s", after)
	}
}
