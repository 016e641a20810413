package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

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
