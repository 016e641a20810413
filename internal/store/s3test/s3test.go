// Package s3test runs a real S3-compatible server, versitygw over a
// temporary directory, for tests of regwarm's S3 store. One server serves
// the whole test process; each caller gets its own bucket.
//
//	func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }
//	func TestX(t *testing.T) { srv := s3test.Shared(t); bucket := srv.Bucket(t) … }
//
// The versitygw binary is looked up in $VERSITYGW, $PATH, then
// $(go env GOPATH)/bin; when it is missing the test fails with the command
// that installs it. Tests never skip for want of it.
package s3test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Install is the command that installs the versitygw binary.
const Install = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Server is a running versitygw.
type Server struct {
	// Endpoint is the server's URL, http://127.0.0.1:port.
	Endpoint  string
	AccessKey string
	SecretKey string
	// Region is the region the server signs with.
	Region string
	// Dir is the directory holding the buckets (a bucket is a directory).
	Dir string

	cmd     *exec.Cmd
	tmp     string
	buckets atomic.Int64
}

var (
	sharedMu  sync.Mutex
	shared    *Server
	sharedErr error
)

// Shared returns the process's server, starting it on first use; Main
// stops it after the tests.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = Start()
	}
	if sharedErr != nil {
		t.Fatalf("s3test: %v", sharedErr)
	}
	return shared
}

// Main runs the tests of m and then stops the shared server.
func Main(m *testing.M) int {
	code := m.Run()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.Stop()
		shared = nil
	}
	return code
}

// Binary finds the versitygw executable.
func Binary() (string, error) {
	if p := os.Getenv("VERSITYGW"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found (in $VERSITYGW, $PATH or $(go env GOPATH)/bin); install it with: %s", Install)
}

// Start runs a new versitygw on a free local port over a new temporary
// directory and waits until it answers.
func Start() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "regwarm-s3test-")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{
		Endpoint:  "http://" + port,
		AccessKey: "s3testkey",
		SecretKey: "s3testsecret123",
		Region:    "us-east-1",
		Dir:       dir,
		tmp:       tmp,
	}
	log, err := os.Create(filepath.Join(tmp, "versitygw.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	s.cmd = exec.Command(bin, "--port", port, "--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region, "posix", dir)
	s.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", port, time.Second)
		if err == nil {
			_ = c.Close()
			return s, nil
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(filepath.Join(tmp, "versitygw.log"))
			_ = os.RemoveAll(tmp)
			return nil, fmt.Errorf("versitygw exited (%v): %s", err, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("versitygw did not listen on %s within 20s", port)
		}
	}
}

// Stop kills the server and removes its directory.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
	_ = os.RemoveAll(s.tmp)
}

// Client returns a minio client of the server.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region:       s.Region,
		BucketLookup: minio.BucketLookupPath,
	})
}

// MakeBucket creates a bucket.
func (s *Server) MakeBucket(ctx context.Context, name string) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		return fmt.Errorf("make bucket %s: %w", name, err)
	}
	return nil
}

// Bucket creates a new bucket for t and returns its name.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test-%d-%d", os.Getpid(), s.buckets.Add(1))
	if err := s.MakeBucket(context.Background(), name); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	return name
}

// freePort returns a free local address, 127.0.0.1:port.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}
