package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// startHub starts a docker-registry upstream and regwarm serve with the
// hub registry on it.
func startHub(t *testing.T, ttl time.Duration) (*harness.Upstream, *harness.Regwarm) {
	t.Helper()
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	return up, harness.StartRegwarm(t, "serve", hubConfig(up.URL(), ttl))
}

// foreignRequests lists upstream requests after the first mark lines that
// regwarm did not send: a client that went around the cache.
func foreignRequests(up *harness.Upstream, mark int) []string {
	var out []string
	for _, r := range up.Requests()[mark:] {
		if !strings.HasPrefix(r.Agent, "regwarm") {
			out = append(out, fmt.Sprintf("%s %s (%s)", r.Method, r.Path, r.Agent))
		}
	}
	return out
}

// podmanMirror writes a registries.conf for t: lab.local lives on the
// upstream and is mirrored by regwarm's hub registry.
func podmanMirror(t *testing.T, up *harness.Upstream, rw *harness.Regwarm) {
	t.Helper()
	conf := fmt.Sprintf(`unqualified-search-registries = []

[[registry]]
prefix = "lab.local"
location = %q
insecure = true

[[registry.mirror]]
location = "%s/hub"
insecure = true
`, up.Addr, rw.Addr)
	writeFile(t, harness.RegistriesConf(t), conf)
}

// containerdMirror writes a containerd hosts dir for t: lab.local lives on
// the upstream and is mirrored by regwarm, which then receives
// /v2/<repo>/…?ns=lab.local.
func containerdMirror(t *testing.T, up *harness.Upstream, rw *harness.Regwarm) string {
	t.Helper()
	dir := t.TempDir()
	conf := fmt.Sprintf(`server = %q

[host.%q]
  capabilities = ["pull", "resolve"]
`, up.URL(), rw.URL())
	if err := os.MkdirAll(filepath.Join(dir, "lab.local"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "lab.local", "hosts.toml"), conf)
	return dir
}

// TestConnectorPullThroughClients pulls five cold images through the hub
// registry with skopeo (all platforms, one platform), podman (registries.conf
// mirror), containerd (hosts.toml mirror, ?ns=lab.local) and dockerd
// (--registry-mirror, a docker.io name), checking bytes and digests and that
// regwarm fetched each blob once. Then it stops the upstream, waits out
// tag_ttl and pulls everything again by tag and by digest: served stale.
func TestConnectorPullThroughClients(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	const ttl = time.Second
	up, rw := startHub(t, ttl)

	// One image per client, so that every first pull is cold.
	repos := map[string]string{
		"all": "e2e/skopeo-all", "one": "e2e/skopeo-one", "podman": "e2e/podman",
		"ctr": "e2e/ctr", "docker": "library/rwdocker",
	}
	ims := map[string]*harness.Image{}
	for i, k := range []string{"all", "one", "podman", "ctr", "docker"} {
		ims[k] = pushNewImage(t, up, repos[k]+":v1", harness.ImageOptions{Seed: int64(101 + i)})
	}
	mark := len(up.Requests())
	hub := rw.Addr + "/hub/"
	d := harness.StartDockerd(t, harness.DockerdOptions{RegistryMirror: rw.URL()})

	// skopeoAll copies every platform and compares the layout with the source.
	skopeoAll := func(t *testing.T, src string) {
		out := filepath.Join(t.TempDir(), "out")
		harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+src, "oci:"+out+":v1")
		harness.AssertSameLayout(t, ims["all"], out)
	}
	// skopeoArm copies the arm64 image only.
	skopeoArm := func(t *testing.T, src string) {
		out := filepath.Join(t.TempDir(), "arm64")
		harness.Skopeo(t, "--override-os", "linux", "--override-arch", "arm64", "copy", "--preserve-digests",
			"--src-tls-verify=false", "docker://"+src, "oci:"+out+":arm64")
		assertPlatformCopy(t, ims["one"], "linux/arm64", out, "arm64")
	}
	podmanPull := func(t *testing.T, refs ...string) {
		podmanMirror(t, up, rw)
		p := harness.Podman(t)
		im, want := ims["podman"], ims["podman"].Platform(hostPlatform())
		for _, ref := range refs {
			p.Run("pull", ref)
			id, digests := podmanInspect(t, p, ref)
			if id != want.Config || !slices.Contains(digests, "lab.local/e2e/podman@"+im.IndexDigest) {
				t.Errorf("podman %s: id %s digests %v, want %s and the index %s", ref, id, digests, want.Config, im.IndexDigest)
			}
		}
	}
	ctrPull := func(t *testing.T, refs ...string) {
		hosts := containerdMirror(t, up, rw)
		c := harness.StartContainerd(t)
		for _, ref := range refs {
			c.Ctr("images", "pull", "--hosts-dir", hosts, ref)
		}
		im := ims["ctr"]
		assertContainerdHas(t, c, im, append([]string{im.IndexDigest}, im.Blobs(hostPlatform())...))
	}
	dockerPull := func(t *testing.T, refs ...string) {
		im, want := ims["docker"], ims["docker"].Platform(hostPlatform())
		for _, ref := range refs {
			d.Docker("pull", ref)
			id, digests := dockerInspect(t, d, ref)
			if id != want.Config || !slices.Contains(digests, "rwdocker@"+im.IndexDigest) {
				t.Errorf("docker %s: id %s digests %v, want %s and rwdocker@%s", ref, id, digests, want.Config, im.IndexDigest)
			}
		}
	}

	t.Run("cold", func(t *testing.T) {
		t.Run("skopeo-all", func(t *testing.T) {
			skopeoAll(t, hub+repos["all"]+":v1")
			assertBlobGETs(t, up, repos["all"], 1, blobsOf(ims["all"], "linux/amd64", "linux/arm64")...)
		})
		t.Run("skopeo-one-platform", func(t *testing.T) {
			skopeoArm(t, hub+repos["one"]+":v1")
			im := ims["one"]
			assertBlobGETs(t, up, repos["one"], 1, blobsOf(im, "linux/arm64")...)
			// Only what was asked for is fetched: nothing amd64-only.
			amd := im.Platform("linux/amd64")
			assertBlobGETs(t, up, repos["one"], 0, append([]string{amd.Config}, amd.Layers[1:]...)...)
			if n := up.CountRequests("GET", "/v2/"+repos["one"]+"/manifests/"+amd.Digest); n != 0 {
				t.Errorf("upstream: the amd64 manifest was fetched %d times, want 0", n)
			}
		})
		t.Run("podman", func(t *testing.T) {
			podmanPull(t, "lab.local/e2e/podman:v1")
			assertBlobGETs(t, up, repos["podman"], 1, blobsOf(ims["podman"], hostPlatform())...)
		})
		t.Run("containerd", func(t *testing.T) {
			before := cacheCount(t, rw, "hub", "kind", "blob", "result", "miss")
			ctrPull(t, "lab.local/e2e/ctr:v1")
			host := blobsOf(ims["ctr"], hostPlatform())
			assertBlobGETs(t, up, repos["ctr"], 1, host...)
			if got := cacheCount(t, rw, "hub", "kind", "blob", "result", "miss") - before; got < float64(len(host)) {
				t.Errorf("regwarm counted %v blob misses for containerd's pull, want at least %d", got, len(host))
			}
		})
		t.Run("dockerd", func(t *testing.T) {
			dockerPull(t, "rwdocker:v1")
			assertBlobGETs(t, up, repos["docker"], 1, blobsOf(ims["docker"], hostPlatform())...)
		})
		// Every client went through regwarm; none reached the upstream itself.
		if reqs := foreignRequests(up, mark); len(reqs) > 0 {
			t.Errorf("the upstream served clients directly:\n%s", strings.Join(reqs, "\n"))
		}
		if n := cacheCount(t, rw, "hub", "result", "stale"); n != 0 {
			t.Errorf("regwarm_cache_requests_total{result=stale} = %v with the upstream up, want 0", n)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	coldEnd := time.Now()

	if err := up.Stop(); err != nil && !strings.Contains(err.Error(), "terminated") {
		t.Logf("stop docker-registry: %v", err)
	}
	if _, err := harness.TryCrane(t, "digest", "--insecure", up.Addr+"/"+repos["all"]+":v1"); err == nil {
		t.Fatal("the upstream still answers after Stop")
	}
	// Every tag was last checked during the cold pulls: once tag_ttl has
	// passed, each pull by tag must revalidate, fail, and serve stale.
	time.Sleep(time.Until(coldEnd.Add(ttl + 300*time.Millisecond)))
	staleBefore := cacheCount(t, rw, "hub", "kind", "manifest", "result", "stale")

	t.Run("upstream-down", func(t *testing.T) {
		t.Run("skopeo-all", func(t *testing.T) {
			skopeoAll(t, hub+repos["all"]+":v1")
			skopeoAll(t, hub+repos["all"]+"@"+ims["all"].IndexDigest)
		})
		t.Run("skopeo-one-platform", func(t *testing.T) {
			skopeoArm(t, hub+repos["one"]+":v1")
			skopeoArm(t, hub+repos["one"]+"@"+ims["one"].Platform("linux/arm64").Digest)
		})
		t.Run("podman", func(t *testing.T) {
			podmanPull(t, "lab.local/e2e/podman:v1", "lab.local/e2e/podman@"+ims["podman"].IndexDigest)
		})
		t.Run("containerd", func(t *testing.T) {
			ctrPull(t, "lab.local/e2e/ctr:v1", "lab.local/e2e/ctr@"+ims["ctr"].IndexDigest)
		})
		t.Run("dockerd", func(t *testing.T) {
			d.Docker("rmi", "rwdocker:v1")
			if _, err := d.TryDocker("image", "inspect", "rwdocker:v1"); err == nil {
				t.Fatal("image still present after docker rmi")
			}
			dockerPull(t, "rwdocker:v1", "rwdocker@"+ims["docker"].IndexDigest)
		})
	})
	// Five clients pulled by tag; each resolution fell back to the stale tag.
	if got := cacheCount(t, rw, "hub", "kind", "manifest", "result", "stale") - staleBefore; got < 5 {
		t.Errorf("regwarm_cache_requests_total{registry=hub,kind=manifest,result=stale} moved by %v, want at least 5", got)
	}
	if got := strings.Fields(harness.Crane(t, "ls", "--insecure", hub+repos["all"])); !slices.Equal(got, []string{"v1"}) {
		t.Errorf("crane ls with the upstream down: %v, want [v1]", got)
	}

	// A stale answer must be quick: the dead upstream refuses connections
	// at once. Two rounds of the five tags at once, each bounded by 3s.
	var slow []string
	for round := range 2 {
		lat := staleLatencies(rw, repos)
		for repo, d := range lat {
			if d > 1500*time.Millisecond {
				slow = append(slow, fmt.Sprintf("round %d %s: %v", round, repo, d))
			}
		}
	}
	if len(slow) > 0 {
		slices.Sort(slow)
		// A down upstream must not delay stale answers (no backoff sleeps
		// inside the connector; the breaker fails fast).
		t.Errorf("stale tags answered slowly (> 1.5s, capped at 3s) with the upstream down:\n%s", strings.Join(slow, "\n"))
	}
}

// staleLatencies GETs the v1 manifest of every repo through hub at once
// and returns how long each took (3s when it timed out or failed).
func staleLatencies(rw *harness.Regwarm, repos map[string]string) map[string]time.Duration {
	client := &http.Client{Timeout: 3 * time.Second}
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]time.Duration{}
	for _, repo := range repos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			resp, err := send(client, http.MethodGet, rw.URL()+"/v2/hub/"+repo+"/manifests/v1", harness.MediaTypeIndex)
			d := time.Since(start)
			if err != nil || resp.StatusCode != http.StatusOK {
				d = client.Timeout
			}
			mu.Lock()
			out[repo] = d
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// TestConnectorTagRevalidation moves a tag upstream: regwarm trusts its
// copy for tag_ttl, then one HEAD (shared by concurrent clients) finds the
// new digest; an unchanged tag costs only a HEAD; a tag deleted upstream
// becomes unknown while its content stays reachable by digest.
func TestConnectorTagRevalidation(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	const ttl = time.Second // short: the test waits it out three times
	up, rw := startHub(t, ttl)
	const repo = "e2e/moving"
	a := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 601, Layers: 1, LayerSize: 4096})
	b := pushNewImage(t, up, repo+":next", harness.ImageOptions{Seed: 602, Layers: 1, LayerSize: 4096})
	path := "/v2/hub/" + repo + "/manifests/v1"
	tagPath := "/v2/" + repo + "/manifests/v1"
	since := func(mark int, method, p string) int {
		n := 0
		for _, r := range up.Requests()[mark:] {
			if r.Method == method && r.Path == p {
				n++
			}
		}
		return n
	}
	expect := func(what string, status int, digest string) {
		t.Helper()
		got, d := manifestDigest(t, rw, path)
		if got != status || (status == http.StatusOK && d != digest) {
			t.Errorf("%s: GET %s = %d %s, want %d %s", what, path, got, d, status, digest)
		}
	}

	expect("cold", http.StatusOK, a.IndexDigest)
	checked := time.Now()
	// Move v1 to b upstream (one quick PUT: b's content is there already).
	putManifestHTTP(t, up.URL(), repo, "v1", harness.MediaTypeIndex, b.ReadBlob(t, b.IndexDigest))
	mark := len(up.Requests())
	expect("within tag_ttl", http.StatusOK, a.IndexDigest)
	if time.Since(checked) < ttl {
		if n := len(up.Requests()) - mark; n != 0 {
			t.Errorf("within tag_ttl regwarm asked the upstream %d times", n)
		}
	}

	time.Sleep(time.Until(checked.Add(ttl + 200*time.Millisecond)))
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); expect("after tag_ttl, concurrently", http.StatusOK, b.IndexDigest) }()
	}
	wg.Wait()
	checked = time.Now()
	if n := since(mark, "HEAD", tagPath); n != 1 {
		t.Errorf("revalidation: %d HEADs of %s, want 1 for 10 concurrent clients", n, tagPath)
	}
	if n := since(mark, "GET", tagPath); n != 0 {
		t.Errorf("revalidation: %d GETs of %s, want 0 (HEAD, then the new digest)", n, tagPath)
	}
	if n := since(mark, "GET", "/v2/"+repo+"/manifests/"+b.IndexDigest); n != 1 {
		t.Errorf("revalidation: %d GETs of the new index, want 1", n)
	}

	mark = len(up.Requests())
	time.Sleep(time.Until(checked.Add(ttl + 200*time.Millisecond)))
	expect("unchanged after tag_ttl", http.StatusOK, b.IndexDigest)
	checked = time.Now()
	for _, r := range up.Requests()[mark:] {
		if r.Method != "HEAD" || r.Path != tagPath {
			t.Errorf("an unchanged tag cost more than a HEAD: %s %s", r.Method, r.Path)
		}
	}

	// Deleting b upstream removes its tags: regwarm believes the 404.
	if code := httpStatus(t, http.MethodDelete, up.URL()+"/v2/"+repo+"/manifests/"+b.IndexDigest); code != http.StatusAccepted {
		t.Fatalf("DELETE upstream manifest: status %d", code)
	}
	time.Sleep(time.Until(checked.Add(ttl + 200*time.Millisecond)))
	expect("deleted upstream", http.StatusNotFound, "")
	if got, d := manifestDigest(t, rw, "/v2/hub/"+repo+"/manifests/"+b.IndexDigest); got != http.StatusOK || d != b.IndexDigest {
		t.Errorf("by digest after the tag went away: %d %s, want 200 %s", got, d, b.IndexDigest)
	}
}
