package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestConnectorOrderAndExclude gives registry "multi" two connectors: the
// first lacks the image, the second has it, so the pull falls through to
// the second. A repository excluded on both is never asked upstream and is
// unknown to regwarm. ?ns=<host> picks "multi" over the default registry.
func TestConnectorOrderAndExclude(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	first := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	second := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+fmt.Sprintf(`registries:
  - {name: local, default: true, push: true}
  - {name: multi, connectors: [first, second], tag_ttl: 5m}
connectors:
  - {name: first, url: %q, host: one.local, exclude: ["secret/**"]}
  - {name: second, url: %q, host: two.local, exclude: ["secret/**"]}
`, first.URL(), second.URL()))

	im := pushNewImage(t, second, "e2e/app:v1", harness.ImageOptions{Seed: 301})
	secret := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 302, Layers: 1})
	for _, up := range []*harness.Upstream{first, second} {
		pushImage(t, secret, up.Addr+"/secret/app:v1")
	}
	// Anything from here on in the access logs came from regwarm.
	marks := []int{len(first.Requests()), len(second.Requests())}

	out := filepath.Join(t.TempDir(), "out")
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
		"docker://"+rw.Addr+"/multi/e2e/app:v1", "oci:"+out+":v1")
	harness.AssertSameLayout(t, im, out)
	assertBlobGETs(t, second, "e2e/app", 1, blobsOf(im, "linux/amd64", "linux/arm64")...)
	asked := 0
	for _, r := range first.Requests()[marks[0]:] {
		if strings.HasPrefix(r.Path, "/v2/e2e/app/") {
			asked++
			if r.Status < 400 {
				t.Errorf("first connector answered %s %s with %d; it has no such image", r.Method, r.Path, r.Status)
			}
		}
	}
	if asked == 0 {
		t.Error("the first connector was never asked: connectors are not tried in order")
	}

	// ?ns= selects the registry whose connector has that host; without it
	// (or with an unknown host) the default registry "local" answers.
	for _, tc := range []struct {
		query  string
		status int
	}{
		{"?ns=two.local", http.StatusOK},
		{"?ns=one.local", http.StatusOK},
		{"", http.StatusNotFound},
		{"?ns=unknown.example", http.StatusNotFound},
	} {
		status, digest := manifestDigest(t, rw, "/v2/e2e/app/manifests/v1"+tc.query)
		if status != tc.status || (status == http.StatusOK && digest != im.IndexDigest) {
			t.Errorf("GET /v2/e2e/app/manifests/v1%s: %d %q, want %d (digest %s)", tc.query, status, digest, tc.status, im.IndexDigest)
		}
	}

	// Excluded on both connectors: 404 without asking either upstream.
	layer := secret.Platform("linux/amd64").Layers[1]
	for _, path := range []string{
		"/v2/multi/secret/app/manifests/v1",
		"/v2/multi/secret/app/manifests/" + secret.IndexDigest,
		"/v2/multi/secret/app/blobs/" + layer,
		"/v2/multi/secret/app/tags/list",
		"/v2/secret/app/manifests/v1?ns=two.local",
	} {
		if status := httpStatus(t, http.MethodGet, rw.URL()+path); status != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", path, status)
		}
	}
	if _, err := harness.TrySkopeo(t, "copy", "--all", "--src-tls-verify=false",
		"docker://"+rw.Addr+"/multi/secret/app:v1", "oci:"+filepath.Join(t.TempDir(), "secret")+":v1"); err == nil {
		t.Error("skopeo copied an excluded repository")
	}
	for i, up := range []*harness.Upstream{first, second} {
		for _, r := range up.Requests()[marks[i]:] {
			if strings.Contains(r.Path, "/secret/") {
				t.Errorf("connector %d was asked for an excluded repository: %s %s", i+1, r.Method, r.Path)
			}
		}
	}
}

// TestConnectorPushRegistryLocalWins uses a registry that accepts pushes
// and has a connector. A tag first resolved through the connector is
// replaced by a push of a rebuilt image (sharing base layers with the
// upstream's): from then on the pushed image is served, also with the
// upstream down and after tag_ttl, while tags only the upstream has are
// still pulled through.
func TestConnectorPushRegistryLocalWins(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	const ttl = time.Second
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+fmt.Sprintf(`registries:
  - {name: mixed, push: true, connectors: [up], tag_ttl: %s}
connectors:
  - {name: up, url: %q, host: lab.local}
`, ttl, up.URL()))
	// Same seed, one more layer: the pushed image shares the shared layer
	// and each platform's first layer with the upstream's, like an image
	// rebuilt on the same base.
	upstream := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 401, Layers: 1})
	pushed := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 401, Layers: 2})
	for _, tag := range []string{"v1", "v2"} {
		pushImage(t, upstream, up.Addr+"/e2e/app:"+tag)
	}
	ref := rw.Addr + "/mixed/e2e/app"
	digest := func(tag string) string {
		return strings.TrimSpace(harness.Crane(t, "digest", "--insecure", ref+":"+tag))
	}

	if got := digest("v1"); got != upstream.IndexDigest {
		t.Fatalf("before the push: v1 -> %s, want the upstream's %s", got, upstream.IndexDigest)
	}
	pushImage(t, pushed, ref+":v1")
	mark := len(up.Requests())

	// Pushed content is local: it needs no upstream.
	_ = up.Stop()
	out := filepath.Join(t.TempDir(), "down")
	if o, err := harness.TrySkopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
		"docker://"+ref+":v1", "oci:"+out+":v1"); err != nil {
		// A layer reported present must really be local: a pushing client
		// told so skips uploading it.
		t.Errorf("the pushed image cannot be pulled while the upstream is down "+
			"(blobs it shares with the upstream were never uploaded): %v\n%s", err, o)
	} else {
		harness.AssertSameLayout(t, pushed, out)
	}
	up.Start()

	check := func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+ref+":v1", "oci:"+out+":v1")
		harness.AssertSameLayout(t, pushed, out)
		if got := digest("v1"); got != pushed.IndexDigest {
			t.Errorf("v1 -> %s, want the pushed %s (upstream has %s)", got, pushed.IndexDigest, upstream.IndexDigest)
		}
	}
	t.Run("fresh", check)
	time.Sleep(ttl + 200*time.Millisecond) // a connector tag would now be revalidated
	t.Run("after-tag-ttl", check)
	for _, r := range up.Requests()[mark:] {
		if r.Path == "/v2/e2e/app/manifests/v1" {
			t.Errorf("the pushed tag was checked upstream: %s %s", r.Method, r.Path)
		}
	}
	own := slices.DeleteFunc(blobsOf(pushed, "linux/amd64", "linux/arm64"), func(d string) bool {
		return slices.Contains(blobsOf(upstream, "linux/amd64", "linux/arm64"), d)
	})
	for _, d := range own {
		if n := up.CountRequests("GET", "/v2/e2e/app/blobs/"+d); n != 0 {
			t.Errorf("pushed blob %s was fetched upstream %d times", d, n)
		}
	}

	// A tag only the upstream has still comes through, and the tag list
	// is the union.
	out = filepath.Join(t.TempDir(), "v2")
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+ref+":v2", "oci:"+out+":v2")
	upstream.Tag = "v2"
	harness.AssertSameLayout(t, upstream, out)
	if got := strings.Fields(harness.Crane(t, "ls", "--insecure", ref)); !slices.Equal(got, []string{"v1", "v2"}) {
		t.Errorf("crane ls: %v, want [v1 v2]", got)
	}
}
