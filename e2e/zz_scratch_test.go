package e2e

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/regwarm/regwarm/e2e/harness"
)

func TestZZScratchPushShared(t *testing.T) {
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+fmt.Sprintf(`registries:
  - {name: mixed, push: true, connectors: [up], tag_ttl: 1s}
connectors:
  - {name: up, url: %q, host: lab.local}
`, up.URL()))
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 401, Layers: 1})
	pushImage(t, im, up.Addr+"/e2e/app:v1")
	pushImage(t, im, rw.Addr+"/mixed/e2e/app:mine")
	for _, r := range up.Requests() {
		t.Logf("%s %s %d", r.Method, r.Path, r.Status)
	}
	up.Stop()
	out := filepath.Join(t.TempDir(), "out")
	o, err := harness.TrySkopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+rw.Addr+"/mixed/e2e/app:mine", "oci:"+out+":v1")
	t.Logf("%v %s", err, o)
}
