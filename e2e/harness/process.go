// Package harness starts the real servers and clients that regwarm's
// end-to-end tests run against: regwarm itself, Debian's docker-registry,
// dockerd, containerd, podman, skopeo, crane and regctl. Everything it starts
// listens on free loopback ports, keeps its state and logs below the test's
// temporary directory, and is stopped by t.Cleanup. On a test failure the
// tail of every log is printed. A missing tool fails the test, it never
// skips it.
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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StopTimeout is how long Stop waits after the stop signal before it
// sends SIGKILL.
const StopTimeout = 15 * time.Second

// logTailLines is how many log lines are printed when a test fails.
const logTailLines = 60

// Process is a long-running child process whose output goes to a log file.
// It runs in its own process group, so Stop and Kill also reach the
// children it spawns (dockerd's containerd, for instance).
type Process struct {
	// Name identifies the process in messages.
	Name string
	// LogPath is the file that receives stdout and stderr; restarts append.
	LogPath string
	// StopSignal is the signal Stop sends first; the zero value means
	// SIGTERM. Set it right after StartProcess.
	StopSignal syscall.Signal

	t    testing.TB
	argv []string
	env  []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartProcess starts argv[0] with the remaining arguments, appending its
// output to a log file in t.TempDir. env is added to the current
// environment. The process is stopped by t.Cleanup, and the log tail is
// printed when the test has failed.
func StartProcess(t testing.TB, name string, env []string, argv ...string) *Process {
	t.Helper()
	p := &Process{
		Name:    name,
		LogPath: filepath.Join(t.TempDir(), name+".log"),
		t:       t,
		argv:    argv,
		env:     env,
	}
	if err := p.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil && !killedBy(err, p.stopSignal()) {
			t.Logf("stop %s: %v", name, err)
		}
		if t.Failed() {
			p.DumpLog()
		}
	})
	return p
}

// Start starts the process again after Stop or Kill, with the same
// command line and log file. It fails if the process is still running.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is still running", p.Name)
		}
	}
	bin, err := exec.LookPath(p.argv[0])
	if err != nil {
		return fmt.Errorf("%s not found on PATH (install it; see .ci/run): %w", p.argv[0], err)
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.argv, " "))
	cmd := exec.Command(bin, p.argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	p.cmd, p.done, p.err = cmd, done, nil
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Pid returns the process id of the current run.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true, nil
	}
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	pid := p.Pid()
	if pid == 0 {
		return errors.New("not started")
	}
	if exited, _ := p.Exited(); exited {
		return nil
	}
	return syscall.Kill(-pid, sig)
}

// Wait waits up to timeout for the process to end and returns its exit error.
func (p *Process) Wait(timeout time.Duration) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s", p.Name, timeout)
	}
}

// Stop sends the stop signal (SIGTERM unless StopSignal says otherwise)
// to the process group, waits up to StopTimeout, then sends SIGKILL. It
// returns the exit error: nil only for exit status 0, so tests can check a
// graceful shutdown (regwarm exits 0 on SIGTERM, nats-server on SIGINT;
// servers that die by the signal, like docker-registry, report "signal:
// terminated").
func (p *Process) Stop() error {
	if exited, err := p.Exited(); exited {
		return err
	}
	sig := p.stopSignal()
	_ = p.Signal(sig)
	err := p.Wait(StopTimeout)
	if exited, _ := p.Exited(); !exited {
		p.Kill()
		return fmt.Errorf("%s ignored %s for %s, killed", p.Name, signalName(sig), StopTimeout)
	}
	return err
}

// stopSignal returns the signal Stop sends first.
func (p *Process) stopSignal() syscall.Signal {
	if p.StopSignal == 0 {
		return syscall.SIGTERM
	}
	return p.StopSignal
}

// signalName names the stop signals in messages ("SIGTERM").
func signalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}

// killedBy reports whether err is the exit of a process that died by sig.
func killedBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws, ok := ee.Sys().(syscall.WaitStatus)
		return ok && ws.Signaled() && ws.Signal() == sig
	}
	return false
}

// Kill sends SIGKILL to the process group and waits for the process to end.
func (p *Process) Kill() {
	if exited, _ := p.Exited(); exited {
		return
	}
	_ = p.Signal(syscall.SIGKILL)
	_ = p.Wait(StopTimeout)
}

// Log returns the whole log file.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// DumpLog prints the last lines of the log to the test log.
func (p *Process) DumpLog() {
	p.t.Logf("--- last %d lines of %s (%s) ---\n%s", logTailLines, p.Name, p.LogPath, tail(p.Log(), logTailLines))
}

// tail returns the last n lines of s, each cut to 400 bytes.
func tail(s string, n int) string {
	lines := strings.Split(LastLines(s, n), "\n")
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + " …"
		}
	}
	return strings.Join(lines, "\n")
}

// LastLines returns the last n lines of s, without a final newline.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// usedPorts keeps FreePort from handing out one port twice in a test binary.
var usedPorts sync.Map

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that this test binary has not handed out before.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if err := l.Close(); err != nil {
			t.Fatalf("free port: %v", err)
		}
		if _, dup := usedPorts.LoadOrStore(port, true); !dup {
			return port
		}
	}
	t.Fatal("free port: no unused port found")
	return 0
}

// FreeAddr returns "127.0.0.1:<FreePort>".
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// ShortTempDir returns a new directory directly below os.TempDir, removed
// by t.Cleanup. Unix socket paths are limited to 107 bytes, and t.TempDir
// paths grow with the test name.
func ShortTempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// Eventually calls cond until it returns nil (see Poll); when timeout has
// passed first, it fails the test with msg and cond's last error.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() error) {
	t.Helper()
	if err := Poll(timeout, cond); err != nil {
		t.Fatalf("%s: not within %s: %v", msg, timeout, err)
	}
}

// Poll calls cond until it returns nil, waiting 10ms after the first call
// and twice as long after each further one, up to 100ms. Once timeout has
// passed it returns cond's last error.
func Poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	delay := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		// The harness's own conditions end a poll at once with an errStop,
		// such as when the process under test died.
		var stop errStop
		if errors.As(err, &stop) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// errStop wraps an error that ends a Poll at once.
type errStop struct{ error }

// waitStart waits until a started process answers a GET of url with one
// of the wanted statuses; see waitProcess.
func waitStart(t testing.TB, p *Process, url string, timeout time.Duration, want ...int) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	waitProcess(t, p, timeout, url, func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		for _, w := range want {
			if resp.StatusCode == w {
				return nil
			}
		}
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	})
}

// waitProcess polls ready until it returns nil. It fails the test when p
// exits first or timeout passes (the cleanup prints the log tail); what
// names what it waits for.
func waitProcess(t testing.TB, p *Process, timeout time.Duration, what string, ready func() error) {
	t.Helper()
	err := Poll(timeout, func() error {
		if exited, err := p.Exited(); exited {
			return errStop{fmt.Errorf("%s exited while waiting for %s: %v", p.Name, what, err)}
		}
		return ready()
	})
	if err != nil {
		t.Fatalf("%s did not become ready: %v", p.Name, err)
	}
}

// maxBody bounds the response bodies that getBody reads.
const maxBody = 16 << 20

// getBody GETs url with client and returns the status and the body (at
// most maxBody bytes of it).
func getBody(client *http.Client, url string) (int, []byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	return resp.StatusCode, body, err
}

// Run runs a command to completion with a timeout and returns its combined
// output. env is added to the current environment.
func Run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found on PATH (install it; see .ci/run): %w", name, err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out.String(), err
}

// CommandTimeout bounds every client command run by the harness.
const CommandTimeout = 3 * time.Minute

// Must runs a client command (see Run) and fails the test, showing the
// output, when it fails. It returns the combined output.
func Must(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	out, err := Try(t, env, name, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, indent(out))
	}
	return out
}

// Try runs a client command (see Run), logs it, and returns its output and
// error without failing the test. A missing tool still fails the test.
func Try(t testing.TB, env []string, name string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found on PATH (install it; see .ci/run)", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	start := time.Now()
	out, err := Run(ctx, env, name, args...)
	t.Logf("$ %s %s  (%.2fs)", name, strings.Join(args, " "), time.Since(start).Seconds())
	return out, err
}

// indent prefixes every line of s with "    " for readable failure output.
func indent(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		b.WriteString("    ")
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String()
}
