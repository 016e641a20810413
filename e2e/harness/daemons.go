package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// DockerdOptions configure StartDockerd.
type DockerdOptions struct {
	// RegistryMirror is passed as --registry-mirror (e.g. "http://ADDR").
	RegistryMirror string
	// InsecureRegistries are passed as --insecure-registry; 127.0.0.0/8 is
	// insecure by default.
	InsecureRegistries []string
}

// Dockerd is a private Docker engine (Debian docker.io 20.10): vfs storage,
// no iptables, no bridge, its own data root, exec root and unix socket.
type Dockerd struct {
	*Process
	// Socket is the API socket path.
	Socket string
	// DataRoot holds images and containers.
	DataRoot string

	t   testing.TB
	env []string
}

// StartDockerd starts dockerd and waits until it answers /_ping.
func StartDockerd(t testing.TB, opts DockerdOptions) *Dockerd {
	t.Helper()
	dir := t.TempDir()
	execRoot := ShortTempDir(t, "rwd") // holds sockets: keep the path short
	d := &Dockerd{Socket: filepath.Join(execRoot, "docker.sock"), DataRoot: filepath.Join(dir, "data"), t: t}
	daemonJSON := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(daemonJSON, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"dockerd",
		"--config-file", daemonJSON,
		"--data-root", d.DataRoot,
		"--exec-root", execRoot,
		"--pidfile", filepath.Join(execRoot, "docker.pid"),
		"--host", "unix://" + d.Socket,
		"--storage-driver", "vfs",
		"--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false",
		"--bridge", "none",
	}
	if opts.RegistryMirror != "" {
		args = append(args, "--registry-mirror", opts.RegistryMirror)
	}
	for _, r := range opts.InsecureRegistries {
		args = append(args, "--insecure-registry", r)
	}
	d.env = append(append([]string{}, ClientEnv(t)...), "DOCKER_HOST=unix://"+d.Socket)
	d.Process = StartProcess(t, "dockerd", nil, args...)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, "unix", d.Socket)
		},
	}}
	waitProcess(t, d.Process, ReadyTimeout, "/_ping", func() error {
		status, body, err := getBody(client, "http://docker/_ping")
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("/_ping: %d %s", status, body)
		}
		return nil
	})
	return d
}

// Docker runs the docker CLI against this daemon and fails the test on
// error. It returns the combined output.
func (d *Dockerd) Docker(args ...string) string {
	d.t.Helper()
	return Must(d.t, d.env, "docker", args...)
}

// TryDocker is Docker without failing the test on a non-zero exit.
func (d *Dockerd) TryDocker(args ...string) (string, error) {
	d.t.Helper()
	return Try(d.t, d.env, "docker", args...)
}

// Containerd is a private containerd (Debian 1.6) with its own root, state
// and socket, the CRI plugin disabled and no TCP listener.
type Containerd struct {
	*Process
	// Socket is the gRPC socket path.
	Socket string
	// Root and State are containerd's root and state directories.
	Root, State string
	// Namespace is the namespace Ctr uses.
	Namespace string

	t testing.TB
}

// StartContainerd writes a config, starts containerd and waits until
// `ctr version` answers.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	if _, err := exec.LookPath("ctr"); err != nil {
		t.Fatal("ctr not found on PATH (install containerd; see .ci/run)")
	}
	dir := t.TempDir()
	state := ShortTempDir(t, "rwc") // holds sockets: keep the path short
	c := &Containerd{
		Socket:    filepath.Join(state, "c.sock"),
		Root:      filepath.Join(dir, "root"),
		State:     filepath.Join(state, "state"),
		Namespace: "e2e",
		t:         t,
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = %q
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, c.Root, c.State, c.Socket, c.Socket+".ttrpc", filepath.Join(state, "debug.sock"), filepath.Join(dir, "opt"))
	path := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Process = StartProcess(t, "containerd", nil, "containerd", "--config", path)
	waitProcess(t, c.Process, ReadyTimeout, "ctr version", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), ReadyTimeout)
		defer cancel()
		out, err := Run(ctx, nil, "ctr", "--address", c.Socket, "version")
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
		}
		return nil
	})
	return c
}

// Ctr runs `ctr --address SOCKET --namespace NS args…` and fails the test
// on error. It returns the combined output.
func (c *Containerd) Ctr(args ...string) string {
	c.t.Helper()
	return Must(c.t, ClientEnv(c.t), "ctr", append([]string{"--address", c.Socket, "--namespace", c.Namespace}, args...)...)
}
