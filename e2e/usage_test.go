package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// usageJSON is `regwarm usage --format json` (CONTRACT.md).
type usageJSON struct {
	Registries []struct {
		Name         string `json:"name"`
		Bytes        int64  `json:"bytes"`
		MaxBytes     int64  `json:"max_bytes"`
		Repositories []struct {
			Name       string `json:"name"`
			Bytes      int64  `json:"bytes"`
			Tags       int    `json:"tags"`
			LastPulled string `json:"last_pulled"`
		} `json:"repositories"`
	} `json:"registries"`
}

func runUsage(t *testing.T, cfgPath string, args ...string) (usageJSON, error) {
	t.Helper()
	res := runRegwarmCLI(t, append([]string{"usage", "--config", cfgPath, "--format", "json"}, args...)...)
	var u usageJSON
	if res.code != 0 {
		return u, fmt.Errorf("exit %d: %s", res.code, res.stderr)
	}
	if err := json.Unmarshal([]byte(res.stdout), &u); err != nil {
		return u, fmt.Errorf("%v in %q", err, res.stdout)
	}
	return u, nil
}

// TestUsageAfterSkopeoPull: skopeo pulls a two-platform image through
// `regwarm run` (whose worker also warms it, which is no pull) from a real
// docker-registry; within 2 s `regwarm usage` shows the client's pull to
// the second, and once everything is stored, the registry's distinct
// bytes (the shared layer once) and its tag.
func TestUsageAfterSkopeoPull(t *testing.T) {
	requireRegwarm(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	im := pushNewImage(t, up, "team/app:v1", harness.ImageOptions{Seed: 913})
	cfg := harness.ConfigHeader + fmt.Sprintf(`registries:
  - name: hub
    default: true
    connectors: [up]
    retention: {max_bytes: 1GiB, keep: ["team/*:v1"]}
connectors:
  - {name: up, url: %q}
`, up.URL())
	rw := harness.StartRegwarm(t, "run", cfg)

	if m := harness.ScrapeMetrics(t, rw.MetricsAddr); !m.Has("regwarm_registry_bytes", "registry", "hub") {
		t.Errorf(`no regwarm_registry_bytes{registry="hub"} at start-up`)
	}
	u, err := runUsage(t, rw.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Registries) != 1 || u.Registries[0].Name != "hub" || u.Registries[0].MaxBytes != 1<<30 ||
		u.Registries[0].Bytes != 0 || len(u.Registries[0].Repositories) != 0 {
		t.Fatalf("usage of an empty cache: %+v", u)
	}

	start := time.Now()
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
		"docker://"+rw.Addr+"/team/app:v1", "oci:"+filepath.Join(t.TempDir(), "out")+":v1")
	pulled := time.Now()
	var last time.Time
	harness.Eventually(t, 2*time.Second, "the pull in regwarm usage", func() error {
		u, err := runUsage(t, rw.ConfigPath, "--registry", "hub")
		if err != nil {
			return err
		}
		for _, r := range u.Registries[0].Repositories {
			if r.Name == "team/app" && r.LastPulled != "" {
				last, err = time.Parse(time.RFC3339, r.LastPulled)
				return err
			}
		}
		return fmt.Errorf("no last_pulled yet: %+v", u)
	})
	t.Logf("last pull visible %v after skopeo returned", time.Since(pulled).Round(time.Millisecond))
	if last.Before(start.Truncate(time.Second)) || last.After(pulled) {
		t.Errorf("last_pulled %v, want between %v and %v", last, start, pulled)
	}

	// Once everything is written, bytes are the distinct stored content.
	want := map[string]bool{im.IndexDigest: true}
	for _, m := range im.Manifests {
		want[m.Digest] = true
		want[m.Config] = true
		for _, l := range m.Layers {
			want[l] = true
		}
	}
	var digests []string
	for d := range want {
		digests = append(digests, d)
	}
	waitWritten(t, rw)
	waitBlobs(t, rw.DataDir, 30*time.Second, "every blob of the image", digests)
	var size int64
	for d := range want {
		fi, err := os.Stat(blobFile(rw.DataDir, d))
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
	}
	u, err = runUsage(t, rw.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	hub := u.Registries[0]
	if hub.Bytes != size || len(hub.Repositories) != 1 || hub.Repositories[0].Bytes != size || hub.Repositories[0].Tags != 1 {
		t.Errorf("usage %+v, want %d bytes in team/app with 1 tag", hub, size)
	}
	// The worker's sync of the same image did not move last_pulled.
	if got := hub.Repositories[0].LastPulled; got != last.UTC().Format(time.RFC3339) {
		t.Errorf("last_pulled %s after the worker's sync, want %s", got, last.UTC().Format(time.RFC3339))
	}

	text := runRegwarmCLI(t, "usage", "--config", rw.ConfigPath)
	if text.code != 0 || !strings.Contains(text.stdout, "team/app") || !strings.Contains(text.stdout, "budget 1.0 GiB") {
		t.Errorf("text usage: exit %d\n%s", text.code, text.stdout)
	}
	if bad := runRegwarmCLI(t, "usage", "--config", rw.ConfigPath, "--registry", "nope"); bad.code != 2 {
		t.Errorf("--registry nope: exit %d, want 2", bad.code)
	}
}
