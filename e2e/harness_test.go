package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestHarnessUpstream checks the docker-registry helper: access-log
// parsing, proxy mode, and Stop/Start keeping port and storage.
func TestHarnessUpstream(t *testing.T) {
	t.Parallel()
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Layers: 1, LayerSize: 64 << 10, Seed: 2})
	ref := up.Addr + "/e2e/up:v1"
	pushImage(t, im, ref)

	blob := "/v2/e2e/up/blobs/" + im.SharedLayer
	before := up.CountRequests("GET", blob)
	for range 2 {
		if got := harness.Crane(t, "blob", "--insecure", up.Addr+"/e2e/up@"+im.SharedLayer); got != string(im.ReadBlob(t, im.SharedLayer)) {
			t.Fatal("crane blob: bytes differ")
		}
	}
	if got := up.CountRequests("GET", blob) - before; got != 2 {
		t.Errorf("access log: %d new GETs of %s, want 2", got, blob)
	}
	found := false
	for _, r := range up.Requests() {
		if r.Method == "PUT" && r.Path == "/v2/e2e/up/manifests/v1" && r.Status == 201 {
			found = true
		}
	}
	if !found {
		t.Error("access log lacks PUT /v2/e2e/up/manifests/v1 201")
	}

	// A docker-registry pull-through cache in front of it.
	proxy := harness.StartDockerRegistry(t, harness.UpstreamOptions{ProxyRemoteURL: up.URL()})
	before = len(up.Requests())
	if got := strings.TrimSpace(harness.Crane(t, "digest", "--insecure", proxy.Addr+"/e2e/up:v1")); got != im.IndexDigest {
		t.Errorf("through the proxy: digest %s, want %s", got, im.IndexDigest)
	}
	if len(up.Requests()) == before {
		t.Error("the proxy did not ask its upstream")
	}

	_ = up.Stop() // docker-registry dies by SIGTERM
	if _, err := harness.TryCrane(t, "digest", "--insecure", ref); err == nil {
		t.Fatal("crane digest succeeded while the registry was stopped")
	}
	up.Start()
	if got := strings.TrimSpace(harness.Crane(t, "digest", "--insecure", ref)); got != im.IndexDigest {
		t.Errorf("after restart: digest %s, want %s", got, im.IndexDigest)
	}
}

// TestHarnessRegwarmRestart starts `regwarm run`, stops it with SIGTERM
// (exit status 0 expected) and kills it, and finds the content again after
// each restart.
func TestHarnessRegwarmRestart(t *testing.T) {
	t.Parallel()
	rw := harness.StartRegwarm(t, "run", coreConfig)
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Layers: 1, LayerSize: 64 << 10, Seed: 3})
	ref := rw.Addr + "/local/e2e/restart:v1"
	pushImage(t, im, ref)

	if err := rw.Stop(); err != nil && harness.Target == harness.TargetRegwarm {
		t.Errorf("regwarm run on SIGTERM: %v, want exit status 0", err)
	}
	rw.Start()
	if got := strings.TrimSpace(harness.Crane(t, "digest", "--insecure", ref)); got != im.IndexDigest {
		t.Errorf("after restart: digest %s, want %s", got, im.IndexDigest)
	}
	rw.Kill()
	rw.Start()
	out := filepath.Join(t.TempDir(), "out")
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+ref, "oci:"+out+":v1")
	harness.AssertSameLayout(t, im, out)
}

// TestHarnessRunnableImage runs the generated hello image with dockerd.
func TestHarnessRunnableImage(t *testing.T) {
	t.Parallel()
	rw := startCore(t)
	im := harness.BuildRunnableImage(t, t.TempDir())
	ref := rw.Addr + "/local/e2e/hello:v1"
	pushImage(t, im, ref)
	d := harness.StartDockerd(t, harness.DockerdOptions{})
	if out := d.Docker("run", "--rm", "--network", "none", ref); !strings.Contains(out, harness.HelloOutput) {
		t.Errorf("docker run: %q lacks %q", out, harness.HelloOutput)
	}
}
