package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestSyncCLIFirstHour: `regwarm sync` takes names of the default registry
// as a pull does (e2e/fh:v1 is hub/e2e/fh:v1), flags after the images, and
// reports a bad argument without dropping the rest of the batch (exit 1).
func TestSyncCLIFirstHour(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	im := pushNewImage(t, up, "e2e/fh:v1", harness.ImageOptions{Seed: 1701})
	cfg := workerConfig(ns.URL(), up.URL())
	rw := harness.StartRegwarm(t, "serve", cfg)
	startWorkers(t, cfg, rw.DataDir, 1)

	out, err := harness.Try(t, nil, harness.RegwarmBinary(t), "sync", "e2e/fh:v1", "not an image",
		"--config", rw.ConfigPath, "--timeout", "60s")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("regwarm sync: %v, want exit 1\n%s", err, out)
	}
	for _, want := range []string{"synced  hub/e2e/fh:v1 " + im.IndexDigest, "error   not an image:"} {
		if !strings.Contains(out, want) {
			t.Errorf("regwarm sync output lacks %q:\n%s", want, out)
		}
	}
	if m := missingBlobs(rw.DataDir, blobsOf(im, "linux/amd64", "linux/arm64")); len(m) > 0 {
		t.Errorf("after regwarm sync: blobs missing from the store: %v", m)
	}
}

// TestVerifyRemoteOnlyAndRepair: a layer whose content is gone from the
// store but still in the upstream docker-registry is remote_only for
// `regwarm verify`, as for `regwarm scan` (exit 0 for both, no problem);
// `regwarm verify --repair` fetches it back.
func TestVerifyRemoteOnlyAndRepair(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/verify-remote"
	im := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 1702})
	rw := harness.StartRegwarm(t, "serve", hubConfig(up.URL(), 5*time.Minute))
	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+t.TempDir()+":v1")
	waitWritten(t, rw)
	layer := im.Platform("linux/amd64").Layers[1]
	removeExisting(t, blobFile(rw.DataDir, layer))

	out := filepath.Join(t.TempDir(), "report.json")
	for _, cmd := range []string{"scan", "verify"} {
		res := runRegwarmCLI(t, cmd, "--config", rw.ConfigPath, "--format", "json", "--output", out)
		res.wantCode(t, 0)
		rep, raw := readReport(t, out)
		if rep.Summary.RemoteOnly != 1 || rep.Summary.Problems != 0 || len(rep.Problems) != 0 {
			t.Errorf("regwarm %s: want remote_only 1 and no problems, got\n%s", cmd, raw)
		}
	}
	if _, err := os.Stat(blobFile(rw.DataDir, layer)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("verify without --repair brought the layer back (%v)", err)
	}
	res := runRegwarmCLI(t, "verify", "--config", rw.ConfigPath, "--format", "json", "--output", out, "--repair")
	res.wantCode(t, 0)
	rep, raw := readReport(t, out)
	if rep.Summary.RemoteOnly != 1 || rep.Summary.Repaired != 1 || rep.Summary.Problems != 0 {
		t.Errorf("regwarm verify --repair: want remote_only 1, repaired 1, no problems, got\n%s", raw)
	}
	if got, err := fileDigest(blobFile(rw.DataDir, layer)); err != nil || got != layer {
		t.Errorf("repaired layer %s: %s, %v", layer, got, err)
	}
}

// TestQuickstartImageRecipe: the README's one command that makes
// ./image:v1 from a local file, and its push and pull, work.
func TestQuickstartImageRecipe(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	rw := startCore(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "README.md"), "hello\n")
	cmd := exec.Command("sh", "-c", "tar -cf layer.tar README.md && skopeo copy tarball:layer.tar oci:./image:v1")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the README's image recipe: %v\n%s", err, out)
	}
	harness.Skopeo(t, "copy", "--dest-tls-verify=false", "oci:"+filepath.Join(dir, "image")+":v1", "docker://"+rw.Addr+"/local/app:v1")
	pushed := strings.TrimSpace(harness.Skopeo(t, "inspect", "--format", "{{.Digest}}", "oci:"+filepath.Join(dir, "image")+":v1"))
	got := strings.TrimSpace(harness.Crane(t, "digest", "--insecure", rw.Addr+"/app:v1"))
	if pushed == "" || got != pushed {
		t.Errorf("app:v1 through the default registry is %q, want the pushed %q", got, pushed)
	}
}
