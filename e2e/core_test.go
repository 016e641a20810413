package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/e2e/harness"
)

// startCoreWithImage starts regwarm with coreConfig and pushes the
// default two-platform test image to it as local/e2e/multi:v1 (ref).
func startCoreWithImage(t *testing.T) (rw *harness.Regwarm, im *harness.Image, ref string) {
	t.Helper()
	rw = startCore(t)
	im = harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1})
	ref = rw.Addr + "/local/e2e/multi:v1"
	pushImage(t, im, ref)
	return rw, im, ref
}

// TestSkopeoRoundTrip pushes the multi-arch image with skopeo and copies it
// back out: the index and every blob must come back byte-identical.
func TestSkopeoRoundTrip(t *testing.T) {
	t.Parallel()
	rw, im, ref := startCoreWithImage(t)

	raw := harness.Skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
	if raw != string(im.ReadBlob(t, im.IndexDigest)) {
		t.Errorf("inspect --raw: index bytes differ:\n got %s\nwant %s", raw, im.ReadBlob(t, im.IndexDigest))
	}
	var tags struct{ Tags []string }
	if err := json.Unmarshal([]byte(harness.Skopeo(t, "list-tags", "--tls-verify=false", "docker://"+rw.Addr+"/local/e2e/multi")), &tags); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tags.Tags, []string{"v1"}) {
		t.Errorf("list-tags: %v, want [v1]", tags.Tags)
	}

	out := filepath.Join(t.TempDir(), "out")
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+ref, "oci:"+out+":v1")
	harness.AssertSameLayout(t, im, out)

	// One platform by manifest digest: exactly that manifest, config and layers.
	arm := im.Platform("linux/arm64")
	one := filepath.Join(t.TempDir(), "arm64")
	harness.Skopeo(t, "copy", "--preserve-digests", "--src-tls-verify=false",
		"docker://"+rw.Addr+"/local/e2e/multi@"+arm.Digest, "oci:"+one+":arm64")
	assertPlatformCopy(t, im, "linux/arm64", one, "arm64")
}

// TestPodmanPull pulls the image with podman, through the registry prefix
// and through the default registry's unprefixed path.
func TestPodmanPull(t *testing.T) {
	t.Parallel()
	rw, im, _ := startCoreWithImage(t)
	want := im.Platform(hostPlatform())

	for _, ref := range []string{rw.Addr + "/local/e2e/multi:v1", rw.Addr + "/e2e/multi:v1"} {
		t.Run(strings.TrimPrefix(ref, rw.Addr+"/"), func(t *testing.T) {
			p := harness.Podman(t)
			p.Run("pull", "--tls-verify=false", ref)
			id, digests := podmanInspect(t, p, ref)
			if id != want.Config {
				t.Errorf("image id %s, want the %s config %s", id, want.Platform, want.Config)
			}
			name, _, _ := strings.Cut(ref, ":v1")
			if !slices.Contains(digests, name+"@"+im.IndexDigest) {
				t.Errorf("RepoDigests %v lack %s@%s", digests, name, im.IndexDigest)
			}
		})
	}
}

// TestCraneCopy copies between repositories and registries with crane and
// checks digests, tags, blobs and the catalog.
func TestCraneCopy(t *testing.T) {
	t.Parallel()
	rw, im, src := startCoreWithImage(t)

	dsts := []string{rw.Addr + "/other/copy/multi:v2", rw.Addr + "/local/e2e/copy:v3"}
	for _, dst := range dsts {
		harness.Crane(t, "copy", "--insecure", src, dst)
		if got := strings.TrimSpace(harness.Crane(t, "digest", "--insecure", dst)); got != im.IndexDigest {
			t.Errorf("crane digest %s = %s, want %s", dst, got, im.IndexDigest)
		}
		if got := harness.Crane(t, "manifest", "--insecure", dst); got != string(im.ReadBlob(t, im.IndexDigest)) {
			t.Errorf("crane manifest %s: index bytes differ", dst)
		}
	}
	other := rw.Addr + "/other/copy/multi"
	for _, d := range im.Blobs("linux/arm64")[1:] { // config and layers
		if got := harness.Crane(t, "blob", "--insecure", other+"@"+d); got != string(im.ReadBlob(t, d)) {
			t.Errorf("crane blob %s@%s: bytes differ (%d bytes)", other, d, len(got))
		}
	}
	if got := strings.Fields(harness.Crane(t, "ls", "--insecure", other)); !slices.Equal(got, []string{"v2"}) {
		t.Errorf("crane ls %s: %v, want [v2]", other, got)
	}
	if got := strings.Fields(harness.Crane(t, "ls", "--insecure", rw.Addr+"/local/e2e/multi")); !slices.Equal(got, []string{"v1"}) {
		t.Errorf("crane ls local/e2e/multi: %v, want [v1]", got)
	}
	catalog := strings.Fields(harness.Crane(t, "catalog", "--insecure", rw.Addr))
	for _, repo := range []string{"local/e2e/multi", "local/e2e/copy", "other/copy/multi"} {
		if !slices.Contains(catalog, repo) {
			t.Errorf("crane catalog: %v lacks %s", catalog, repo)
		}
	}
}

// TestRegctlCopyAndReferrers copies with regctl, attaches an artifact to
// the image with --subject and finds it again through the referrers.
func TestRegctlCopyAndReferrers(t *testing.T) {
	t.Parallel()
	rw, im, _ := startCoreWithImage(t)
	host := harness.RegctlHost(rw.Addr)
	repo := rw.Addr + "/local/e2e/multi"

	dst := rw.Addr + "/other/regctl/multi:v3"
	harness.Regctl(t, host, "image", "copy", repo+":v1", dst)
	if got := strings.TrimSpace(harness.Regctl(t, host, "image", "digest", dst)); got != im.IndexDigest {
		t.Errorf("regctl image digest %s = %s, want %s", dst, got, im.IndexDigest)
	}

	const artifactType = "application/vnd.regwarm.e2e.note"
	note := filepath.Join(t.TempDir(), "note.txt")
	if err := os.WriteFile(note, []byte("hello from e2e\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	harness.Regctl(t, host, "artifact", "put", "--by-digest", "--artifact-type", artifactType, "--file", note, "--subject", repo+":v1", repo)

	var list struct {
		Descriptors []struct {
			MediaType    string `json:"mediaType"`
			Digest       string `json:"digest"`
			ArtifactType string `json:"artifactType"`
		} `json:"descriptors"`
	}
	if err := json.Unmarshal([]byte(harness.Regctl(t, host, "artifact", "list", "--format", "{{json .}}", repo+":v1")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Descriptors) != 1 || list.Descriptors[0].ArtifactType != artifactType {
		t.Fatalf("artifact list: %+v, want one %s", list.Descriptors, artifactType)
	}
	art := list.Descriptors[0].Digest
	if got := harness.Regctl(t, host, "artifact", "get", repo+"@"+art); got != "hello from e2e\n" {
		t.Errorf("artifact get: %q", got)
	}
	var tree struct {
		Referrer []struct {
			Manifest struct {
				Subject struct{ Digest string } `json:"subject"`
			} `json:"manifest"`
			ArtifactType string `json:"artifactType"`
		} `json:"referrer"`
	}
	if err := json.Unmarshal([]byte(harness.Regctl(t, host, "artifact", "tree", "--format", "{{json .}}", repo+":v1")), &tree); err != nil {
		t.Fatal(err)
	}
	if len(tree.Referrer) != 1 || tree.Referrer[0].Manifest.Subject.Digest != im.IndexDigest || tree.Referrer[0].ArtifactType != artifactType {
		t.Errorf("artifact tree: %+v, want one %s referrer with subject %s", tree.Referrer, artifactType, im.IndexDigest)
	}
	if harness.Target == harness.TargetRegwarm {
		// regwarm has the referrers API, so regctl needs no sha256-<digest>
		// fallback tag (docker-registry 2.8 gets one).
		if got := strings.Fields(harness.Crane(t, "ls", "--insecure", repo)); !slices.Equal(got, []string{"v1"}) {
			t.Errorf("tags of %s: %v, want only v1 (no referrers fallback tag)", repo, got)
		}
	}
}

// TestDockerPullPush pulls with dockerd, pushes a retagged copy and pulls
// that back after removing it locally; then pulls a Docker Hub name through
// --registry-mirror, which lands on the default registry.
func TestDockerPullPush(t *testing.T) {
	t.Parallel()
	rw, im, src := startCoreWithImage(t)
	want := im.Platform(hostPlatform())

	d := harness.StartDockerd(t, harness.DockerdOptions{RegistryMirror: rw.URL(), InsecureRegistries: []string{rw.Addr}})
	d.Docker("pull", src)
	id, digests := dockerInspect(t, d, src)
	if id != want.Config {
		t.Errorf("pulled image id %s, want the %s config %s", id, want.Platform, want.Config)
	}
	if !slices.Contains(digests, rw.Addr+"/local/e2e/multi@"+im.IndexDigest) {
		t.Errorf("RepoDigests %v lack the index %s", digests, im.IndexDigest)
	}

	pushed := rw.Addr + "/local/e2e/pushed:v1"
	d.Docker("tag", src, pushed)
	out := d.Docker("push", pushed)
	pushDigest := ""
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "sha256:") {
			pushDigest = f
		}
	}
	if got := strings.TrimSpace(harness.Crane(t, "digest", "--insecure", pushed)); pushDigest == "" || got != pushDigest {
		t.Fatalf("docker push reported digest %q, registry has %s\n%s", pushDigest, got, out)
	}
	var m struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal([]byte(harness.Crane(t, "manifest", "--insecure", pushed)), &m); err != nil {
		t.Fatal(err)
	}
	if m.Config.Digest != want.Config || len(m.Layers) != len(want.Layers) {
		t.Errorf("pushed manifest: config %s with %d layers, want %s with %d", m.Config.Digest, len(m.Layers), want.Config, len(want.Layers))
	}
	if got := harness.Crane(t, "blob", "--insecure", rw.Addr+"/local/e2e/pushed@"+want.Config); got != string(im.ReadBlob(t, want.Config)) {
		t.Error("pushed config blob differs from the original")
	}

	d.Docker("rmi", src, pushed)
	if _, err := d.TryDocker("image", "inspect", pushed); err == nil {
		t.Fatal("image still present after docker rmi")
	}
	d.Docker("pull", pushed)
	id, digests = dockerInspect(t, d, pushed)
	if id != want.Config {
		t.Errorf("pulled-back image id %s, want %s", id, want.Config)
	}
	if !slices.Contains(digests, rw.Addr+"/local/e2e/pushed@"+pushDigest) {
		t.Errorf("RepoDigests %v lack the pushed digest %s", digests, pushDigest)
	}

	// docker.io/e2e/multi:v1 goes to the mirror as /v2/e2e/multi/…: the
	// default registry "local" has it (there is no internet to fall back to).
	d.Docker("pull", "e2e/multi:v1")
	id, digests = dockerInspect(t, d, "e2e/multi:v1")
	if id != want.Config || !slices.Contains(digests, "e2e/multi@"+im.IndexDigest) {
		t.Errorf("mirror pull: id %s digests %v, want %s and e2e/multi@%s", id, digests, want.Config, im.IndexDigest)
	}
}

// TestContainerdPull fetches every platform with containerd's ctr and
// unpacks the host platform.
func TestContainerdPull(t *testing.T) {
	t.Parallel()
	_, im, ref := startCoreWithImage(t)

	c := harness.StartContainerd(t)
	c.Ctr("content", "fetch", "--plain-http", "--all-platforms", ref)
	c.Ctr("images", "pull", "--plain-http", ref)
	assertContainerdHas(t, c, im, im.AllBlobs())
}
