package registryapi

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// limitServer serves the API (config serve: extra) on a limited listener
// like the daemon does.
func limitServer(t *testing.T, total, perClient int, serve string) (string, *metrics.Set) {
	t.Helper()
	dir := t.TempDir()
	cfg, err := config.Parse([]byte("version: 1\ndata_dir: " + dir + "\nserve:\n" + serve + "registries:\n  - {name: local, default: true, push: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	h, err := New(ConfigOf(cfg), st, WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: cfg.Serve.HeaderTimeout.D()}
	go func() { _ = srv.Serve(LimitListener(ln, total, perClient, true, m)) }()
	t.Cleanup(func() { _ = srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port, m
}

// dialFrom connects from the loopback address src (all of 127/8 is local).
func dialFrom(t *testing.T, src, port string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// get sends a GET /v2/ on c and returns the status line and body.
func get(t *testing.T, c net.Conn) (int, string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return 0, err.Error()
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// A flood of connections from one address is cut at the per-client cap
// with 429 and an OCI error, while another address is still served; the
// total cap answers 503.
func TestConnectionLimits(t *testing.T) {
	port, m := limitServer(t, 4, 2, "")
	a1, a2 := dialFrom(t, "127.0.0.1", port), dialFrom(t, "127.0.0.1", port)
	if st, body := get(t, a1); st != 200 {
		t.Fatalf("first connection: %d %s", st, body)
	}
	_ = a2
	st, body := get(t, dialFrom(t, "127.0.0.1", port))
	if st != 429 || !strings.Contains(body, `"TOOMANYREQUESTS"`) {
		t.Fatalf("third connection from 127.0.0.1: %d %s", st, body)
	}
	b1 := dialFrom(t, "127.0.0.2", port)
	if st, body := get(t, b1); st != 200 {
		t.Fatalf("connection from 127.0.0.2: %d %s", st, body)
	}
	dialFrom(t, "127.0.0.3", port)
	st, body = get(t, dialFrom(t, "127.0.0.4", port))
	if st != 503 || !strings.Contains(body, `"UNAVAILABLE"`) {
		t.Fatalf("connection over the total: %d %s", st, body)
	}
	if got := testutil.ToFloat64(m.Limits.RejectedConnections.WithLabelValues(metrics.ReasonPerClient)); got != 1 {
		t.Fatalf("per-client rejections %v", got)
	}
	if got := testutil.ToFloat64(m.Limits.RejectedConnections.WithLabelValues(metrics.ReasonMaxConnections)); got != 1 {
		t.Fatalf("total rejections %v", got)
	}
	// A closed connection frees its place.
	a1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := get(t, dialFrom(t, "127.0.0.1", port))
		if st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("place not freed: %d", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A request body that stops arriving is abandoned after
// serve.body_idle_timeout; a slow but steady one still completes.
func TestBodyIdleTimeout(t *testing.T) {
	port, m := limitServer(t, 100, 100, "  body_idle_timeout: 1s\n")
	data := "0123456789abcdef"
	d := "sha256:9f9f5111f7b27a781f1f1ddde5ebc2dd2b796bfc7365c9c28b548e564176929f"
	req := func(c net.Conn) {
		fmt.Fprintf(c, "POST /v2/x/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", d, len(data))
	}
	// Stalled: half the body, then nothing.
	c := dialFrom(t, "127.0.0.1", port)
	req(c)
	if _, err := io.WriteString(c, data[:8]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(6 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("stalled body: no answer after %v: %v", time.Since(start), err)
	}
	if res.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled body: status %d", res.StatusCode)
	}
	if got := testutil.ToFloat64(m.Limits.BodyTimeouts); got != 1 {
		t.Fatalf("body timeouts %v", got)
	}
	// Slow but steady: a byte every 100 ms, 1.6 s in all.
	c = dialFrom(t, "127.0.0.2", port)
	req(c)
	for i := range len(data) {
		time.Sleep(100 * time.Millisecond)
		if _, err := io.WriteString(c, data[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || res.StatusCode != http.StatusCreated {
		t.Fatalf("slow body: %v %v", res, err)
	}
}
