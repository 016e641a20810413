package harness

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// NATSMaxPayload is the max_payload of servers started by StartNATS: 2 MiB,
// so that tests can publish 1 MiB messages (the Debian default is 1 MiB,
// headers included).
const NATSMaxPayload = 2 << 20

// NATS is a running Debian nats-server with JetStream on file storage.
type NATS struct {
	*Process
	// Addr is the client listener, 127.0.0.1:PORT.
	Addr string
	// MonitorAddr is the HTTP monitoring listener (/healthz, /jsz).
	MonitorAddr string
	// StoreDir is the JetStream store directory; it survives Stop and Start.
	StoreDir string
	// ServerName is the server_name of a cluster node (StartNATSCluster).
	ServerName string
	// ClusterAddr is a cluster node's route listener (StartNATSCluster).
	ClusterAddr string

	t testing.TB
}

// StartNATS starts nats-server with JetStream on free loopback ports and a
// store directory in t.TempDir, and waits until /healthz reports ready.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n := startNATSNode(t, "nats-server", "regwarm-e2e", "")
	waitStart(t, n.Process, n.monitorURL(), ReadyTimeout, http.StatusOK)
	return n
}

// startNATSNode writes a config for server serverName (clusterBlock, when
// not empty, is its cluster block) and starts it as process procName on
// free loopback ports with a store directory in t.TempDir, without waiting
// for it. Stop sends SIGINT, on which nats-server exits 0 (it exits 1 on
// SIGTERM).
func startNATSNode(t testing.TB, procName, serverName, clusterBlock string) *NATS {
	t.Helper()
	dir := t.TempDir()
	n := &NATS{Addr: FreeAddr(t), MonitorAddr: FreeAddr(t), StoreDir: filepath.Join(dir, "js"), ServerName: serverName, t: t}
	cfg := fmt.Sprintf(`server_name: %s
listen: %q
http: %q
max_payload: %d
%sjetstream {
  store_dir: %q
  max_memory_store: 64MB
  max_file_store: 2GB
}
`, n.ServerName, n.Addr, n.MonitorAddr, NATSMaxPayload, clusterBlock, n.StoreDir)
	path := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n.Process = StartProcess(t, procName, nil, "nats-server", "-c", path)
	n.StopSignal = syscall.SIGINT
	return n
}

// URL returns the client URL, "nats://ADDR".
func (n *NATS) URL() string { return "nats://" + n.Addr }

func (n *NATS) monitorURL() string { return "http://" + n.MonitorAddr + "/healthz" }

// Start starts the server again after Stop or Kill, on the same ports with
// the same store, and waits until it is ready.
func (n *NATS) Start() {
	n.t.Helper()
	if err := n.Process.Start(); err != nil {
		n.t.Fatalf("restart nats-server: %v", err)
	}
	waitStart(n.t, n.Process, n.monitorURL(), ReadyTimeout, http.StatusOK)
}
