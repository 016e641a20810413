package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Target names, as the report spells them.
const (
	targetDirect  = "direct"
	targetRegwarm = "regwarm"
	targetProxy   = "proxy"
	// regwarm serve without workers: the multi-platform pull without
	// warming (only with -only multi -targets).
	targetRegwarmServe = "regwarm-serve"
	// The floor: bench/relay copying only, verifying digests, and
	// verifying while writing each blob to a file.
	targetRelay       = "relay"
	targetRelayVerify = "relay-verify"
	targetRelayStore  = "relay-store"
)

// server is a running registry (or file server) under test.
type server struct {
	target string
	addr   string
	data   string // data directory, removed by stopServer
	proc   *proc
}

// env is what every scenario shares: the tools, the work directory, the
// upstream and the process table.
type env struct {
	ctx       context.Context
	work      string
	regwarm   string // regwarm binary
	servefile string // servefile binary
	procs     *procs
	upstream  *server
	accessLog string       // the upstream's access log
	seq       atomic.Int64 // numbers directories; concurrent pulls share it
	relay     string       // bench/relay binary; "" to skip the floor
	pinned    bool         // client and upstream on clientCPU, servers started on cacheCPU
	keepLogs  string       // where regwarm logs are copied before removal; "" for nowhere
	logLevel  string       // regwarm's log level
	wan       *shaper      // set while the WAN scenario runs: caches reach the upstream through it
}

func (e *env) dir(kind string) (string, error) {
	d := filepath.Join(e.work, fmt.Sprintf("%s-%03d", kind, e.seq.Add(1)))
	return d, os.MkdirAll(d, 0o755)
}

// registryConfig is a docker-registry (distribution 2.8) config: filesystem
// storage, default logging (info, with the access log on stdout), and a
// pull-through proxy when remote is set.
func registryConfig(root, addr, remote string) string {
	s := fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`, root, addr)
	if remote != "" {
		s += "proxy:\n  remoteurl: http://" + remote + "\n"
	}
	return s
}

// place makes a directory for a server of kind and picks its address.
func (e *env) place(kind string) (dir, addr string, err error) {
	if dir, err = e.dir(kind); err != nil {
		return "", "", err
	}
	addr, err = freeAddr()
	return dir, addr, err
}

// startRegistry starts docker-registry on a free port; remote makes it a
// pull-through proxy of that address. Its access log (stdout) goes to
// access.log in its directory.
func (e *env) startRegistry(target, remote string) (*server, error) {
	dir, addr, err := e.place(target)
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(registryConfig(filepath.Join(dir, "data"), addr, remote)), 0o644); err != nil {
		return nil, err
	}
	return e.launch(target, dir, addr, "/v2/", "access.log", "registry.log", "docker-registry", "serve", cfg)
}

// launch starts argv for target with its stdout in dir/outLog (and stderr
// in dir/errLog, or with stdout when it is ""), and waits until addr
// answers 200 on the path ready.
func (e *env) launch(target, dir, addr, ready, outLog, errLog string, argv ...string) (*server, error) {
	errPath, tail := "", filepath.Join(dir, outLog)
	if errLog != "" {
		errPath = filepath.Join(dir, errLog)
		tail = errPath
	}
	p, err := e.procs.start(target, filepath.Join(dir, outLog), errPath, append(e.onCPU(cacheCPU), argv...)...)
	if err != nil {
		return nil, err
	}
	s := &server{target: target, addr: addr, data: dir, proc: p}
	if err := waitHTTP(e.ctx, p, "http://"+addr+ready); err != nil {
		e.procs.stop(p)
		return nil, fmt.Errorf("%w\n%s", err, logTail(tail, 20))
	}
	return s, nil
}

// startRegwarm starts `regwarm serve` with a fresh data directory and one
// connector to the upstream, at the default log level.
func (e *env) startRegwarm() (*server, error) { return e.startRegwarmAs("serve") }

// startRegwarmAs is startRegwarm for mode "serve" or "run" (embedded NATS
// on a free port, a worker warming what misses name).
func (e *env) startRegwarmAs(mode string) (*server, error) {
	dir, addr, err := e.place(targetRegwarm)
	if err != nil {
		return nil, err
	}
	maddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	nats := ""
	if mode == "run" {
		naddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		nats = fmt.Sprintf("nats: {embedded: {listen: %q}}\n", naddr)
	}
	cfg := filepath.Join(dir, "regwarm.yaml")
	yaml := fmt.Sprintf(`version: 1
data_dir: %q
serve: {listen: %q}
metrics: {listen: %q}
log: {level: %s}
%sregistries:
  - {name: hub, default: true, connectors: [up]}
connectors:
  - {name: up, url: "http://%s"}
`, filepath.Join(dir, "data"), addr, maddr, e.logLevel, nats, e.remoteAddr())
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	return e.launch(targetRegwarm, dir, addr, "/v2/", "regwarm.log", "", e.regwarm, mode, "--config", cfg)
}

// remoteAddr is where caches find the upstream: the WAN shaper while the
// WAN scenario runs, else the upstream itself.
func (e *env) remoteAddr() string {
	if e.wan != nil {
		return e.wan.addr()
	}
	return e.upstream.addr
}

// startCache starts a fresh, empty cache of the upstream for target; for
// the direct target it returns the upstream itself.
func (e *env) startCache(target string) (*server, error) {
	switch target {
	case targetRegwarm:
		return e.startRegwarm()
	case targetProxy:
		return e.startRegistry(targetProxy, e.remoteAddr())
	case targetDirect:
		if e.wan != nil {
			return &server{target: targetDirect, addr: e.wan.addr()}, nil
		}
		return e.upstream, nil
	case targetRelay, targetRelayVerify, targetRelayStore:
		return e.startRelay(target)
	}
	return nil, fmt.Errorf("unknown target %q", target)
}

// startRelay starts bench/relay in front of the upstream.
func (e *env) startRelay(target string) (*server, error) {
	dir, addr, err := e.place(target)
	if err != nil {
		return nil, err
	}
	args := []string{"-listen", addr, "-upstream", "http://" + e.upstream.addr}
	switch target {
	case targetRelayVerify:
		args = append(args, "-verify")
	case targetRelayStore:
		blobs := filepath.Join(dir, "blobs")
		if err := os.MkdirAll(blobs, 0o755); err != nil {
			return nil, err
		}
		args = append(args, "-store", blobs)
	}
	return e.launch(target, dir, addr, "/v2/", "relay.log", "", append([]string{e.relay}, args...)...)
}

// stopServer stops a cache and removes its data; the upstream stays.
func (e *env) stopServer(s *server) {
	if s == nil || s == e.upstream || s.proc == nil {
		return
	}
	e.procs.stop(s.proc)
	if e.keepLogs != "" && s.target == targetRegwarm {
		if b, err := os.ReadFile(filepath.Join(s.data, "regwarm.log")); err == nil {
			_ = os.MkdirAll(e.keepLogs, 0o755)
			_ = os.WriteFile(filepath.Join(e.keepLogs, filepath.Base(s.data)+".log"), b, 0o644)
		}
	}
	if s.data != "" {
		_ = os.RemoveAll(s.data)
	}
}

// stopServers stops every server of m.
func (e *env) stopServers(m map[string]*server) {
	for _, s := range m {
		e.stopServer(s)
	}
}

// startServeFile serves file with bench/servefile.
func (e *env) startServeFile(file string) (*server, error) {
	dir, addr, err := e.place("servefile")
	if err != nil {
		return nil, err
	}
	return e.launch("servefile", dir, addr, "/", "servefile.log", "", e.servefile, "-listen", addr, "-file", file)
}

// idle waits (up to 2 s) until the process's RSS has been steady for a
// moment: start-up allocations are done.
func idle(p *proc) error {
	var last int64
	for range 40 {
		time.Sleep(50 * time.Millisecond)
		rss, _, err := memStatus(p.pid())
		if err != nil {
			return err
		}
		if rss == last {
			return nil
		}
		last = rss
	}
	return nil
}

// logTail returns the last lines of a log file, for error messages.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// cpuTime is the CPU time the server's process has used so far: its
// threads' schedstat, else user+system from /proc/<pid>/stat; -1 when it
// cannot be read.
func (s *server) cpuTime() time.Duration {
	if s.proc == nil || s.proc.cmd == nil || s.proc.cmd.Process == nil {
		return -1
	}
	pid := s.proc.cmd.Process.Pid
	if d, ok := schedTime(pid); ok {
		return d
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name (which may hold spaces) in parens.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	// USER_HZ is 100 on every Linux pullbench runs on.
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// schedTime sums the run time of pid's threads from their schedstat
// (nanoseconds, unlike stat's clock ticks); Go rarely ends a thread, so
// time of threads that ended is lost only seldom.
func schedTime(pid int) (time.Duration, bool) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, false
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		sum += ns
	}
	return time.Duration(sum), true
}
