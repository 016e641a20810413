package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs tracks every long-running process pullbench starts, so that all of
// them are stopped, by pid, however the run ends.
type procs struct {
	mu   sync.Mutex
	live map[*proc]bool
}

// proc is one started server process.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process exited
	err  error         // its exit status, valid after done
	logs []*os.File
}

// start runs argv with stdout and stderr appended to the given files
// (stderr to stdout's file when errPath is "").
func (ps *procs) start(name, outPath, errPath string, argv ...string) (*proc, error) {
	out, err := os.OpenFile(outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, done: make(chan struct{}), logs: []*os.File{out}}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	if errPath != "" {
		ef, err := os.OpenFile(errPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			_ = out.Close()
			return nil, err
		}
		cmd.Stderr = ef
		p.logs = append(p.logs, ef)
	}
	// Should pullbench itself be killed, its servers go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.closeLogs()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	ps.mu.Lock()
	if ps.live == nil {
		ps.live = map[*proc]bool{}
	}
	ps.live[p] = true
	ps.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		p.closeLogs()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) closeLogs() {
	for _, f := range p.logs {
		_ = f.Close()
	}
}

// pid returns the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends p: SIGTERM, then SIGKILL after a grace period.
func (ps *procs) stop(p *proc) {
	if p == nil {
		return
	}
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	ps.mu.Lock()
	delete(ps.live, p)
	ps.mu.Unlock()
}

// stopAll stops every process still running.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	var all []*proc
	for p := range ps.live {
		all = append(all, p)
	}
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range all {
		wg.Go(func() { ps.stop(p) })
	}
	wg.Wait()
}

// freeAddr returns a loopback address whose port was free a moment ago.
// Ports come from the kernel's ephemeral range, outside the lab's
// 15000-15099; each is handed out once per run.
func freeAddr() (string, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port >= 15000 && port <= 15099 {
			continue
		}
		if _, dup := usedPorts.LoadOrStore(port, true); !dup {
			return "127.0.0.1:" + strconv.Itoa(port), nil
		}
	}
	return "", errors.New("no free port found")
}

var usedPorts sync.Map

// waitHTTP polls url until it answers 200, the process exits, or 30 s pass.
func waitHTTP(ctx context.Context, p *proc, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			return fmt.Errorf("%s exited while starting: %v", p.name, p.err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if res, err := client.Do(req); err == nil {
			_ = res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not ready within 30s", p.name, url)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// memStatus returns VmRSS and VmHWM (peak RSS) of pid in bytes.
func memStatus(pid int) (rss, hwm int64, err error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %w", pid, key, err)
		}
		if key == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS/VmHWM", pid)
	}
	return rss, hwm, nil
}

// resetPeak resets pid's VmHWM to its current RSS (clear_refs "5").
func resetPeak(pid int) error {
	return os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "clear_refs"), []byte("5"), 0)
}
