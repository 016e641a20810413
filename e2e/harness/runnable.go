package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// HelloOutput is what the container of BuildRunnableImage prints.
const HelloOutput = "hello from regwarm e2e"

// helloSource is the program inside the runnable image.
const helloSource = `package main

import "fmt"

func main() { fmt.Println("` + HelloOutput + `") }
`

var hello struct {
	once sync.Once
	bin  []byte
	err  error
}

// helloBinary compiles helloSource once per test binary: static, for this
// machine's architecture.
func helloBinary() ([]byte, error) {
	hello.once.Do(func() {
		dir, err := os.MkdirTemp("", "regwarm-e2e-hello")
		if err != nil {
			hello.err = err
			return
		}
		defer func() { _ = os.RemoveAll(dir) }() // build scratch; a leftover is harmless
		if err := os.WriteFile(filepath.Join(dir, "hello.go"), []byte(helloSource), 0o644); err != nil {
			hello.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", "hello", "hello.go")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=-buildvcs=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			hello.err = fmt.Errorf("go build hello: %v\n%s", err, out)
			return
		}
		hello.bin, hello.err = os.ReadFile(filepath.Join(dir, "hello"))
	})
	return hello.bin, hello.err
}

// BuildRunnableImage writes an OCI layout, tagged "v1", whose index has
// one manifest for linux/<this machine's arch>: a single layer with a static
// /hello binary that prints HelloOutput, and Cmd ["/hello"]. Use it for
// `docker run`, `ctr run` and `podman run`.
func BuildRunnableImage(t testing.TB, dir string) *Image {
	t.Helper()
	bin, err := helloBinary()
	if err != nil {
		t.Fatalf("BuildRunnableImage: %v", err)
	}
	l, err := tarLayer("hello", 0o755, bin)
	if err != nil {
		t.Fatalf("BuildRunnableImage: %v", err)
	}
	im, err := writeLayout(dir, "v1", []platformSpec{{
		name:   "linux/" + runtime.GOARCH,
		layers: []layer{l},
		cmd:    []string{"/hello"},
		labels: map[string]string{"org.regwarm.e2e.image": "hello"},
	}}, false)
	if err != nil {
		t.Fatalf("BuildRunnableImage: %v", err)
	}
	im.SharedLayer = l.digest()
	return im
}
