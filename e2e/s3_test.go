package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/regwarm/regwarm/e2e/harness"
)

// s3Config is a config on the bucket of s: registry hub (connector up at
// upURL) and push registry local, NATS at natsURL unless it is empty.
func s3Config(s *harness.S3, natsURL, upURL string, storage ...string) string {
	nats := ""
	if natsURL != "" {
		nats = fmt.Sprintf("nats: {url: %q}\nworker: {concurrency: 4, ack_wait: 10s}\n", natsURL)
	}
	return `version: 1
data_dir: "{{.DataDir}}"
log: {level: debug, format: text}
serve: {listen: "{{.Addr}}"}
metrics: {listen: "{{.MetricsAddr}}"}
` + nats + fmt.Sprintf(`registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: 5m}
  - {name: local, push: true}
connectors:
  - {name: up, url: %q, host: lab.local}
`, upURL) + s.Storage(storage...)
}

// blobKeys are the bucket keys of digests in the S3 store's layout.
func blobKeys(digests []string) []string {
	keys := make([]string, len(digests))
	for i, d := range digests {
		alg, hx, _ := strings.Cut(d, ":")
		keys[i] = "blobs/" + alg + "/" + hx
	}
	return keys
}

// missingKeys returns the keys not in the bucket.
func missingKeys(t *testing.T, s *harness.S3, keys []string) []string {
	t.Helper()
	have := s.Keys(t, "")
	var missing []string
	for _, k := range keys {
		if !slices.Contains(have, k) {
			missing = append(missing, k)
		}
	}
	return missing
}

// patchChunk sends one chunk of an upload to location (resolved against
// base) and returns the next location.
func patchChunk(t *testing.T, base, location string, off int, chunk []byte) string {
	t.Helper()
	u := resolve(t, base, location)
	req, _ := http.NewRequest(http.MethodPatch, u.String(), bytes.NewReader(chunk))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", off, off+len(chunk)-1))
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH chunk at %d to %s: status %d", off, base, resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

func resolve(t *testing.T, base, location string) *url.URL {
	t.Helper()
	b, err := url.Parse(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	u, err := b.Parse(location)
	if err != nil {
		t.Fatalf("Location %q: %v", location, err)
	}
	// A location naming the other process's host is sent to base anyway.
	u.Scheme, u.Host = b.Scheme, b.Host
	return u
}

// regwarmCLIEnv runs the regwarm binary with env added and returns its
// exit code and output.
func regwarmCLIEnv(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.RegwarmBinary(t), args...)
	cmd.Env = append(append(os.Environ(), harness.ClientEnv(t)...), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("$ regwarm %s", strings.Join(args, " "))
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("regwarm %s: %v", strings.Join(args, " "), err)
	}
	return 0, string(out)
}

// TestS3TwoServesOneBucket runs two serve processes with their own
// data_dirs on one bucket, an external JetStream server and a worker:
// what is pushed through one is pulled byte-identically through the
// other; a chunked upload begun on one is finished on the other; a cold
// pull of one platform through the first makes the worker warm every
// platform, which the second then serves with the upstream stopped.
func TestS3TwoServesOneBucket(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	s := harness.StartS3(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	cfg := s3Config(s, ns.URL(), up.URL())
	a := harness.StartRegwarmEnv(t, "serve", cfg, s.Env())
	b := harness.StartRegwarmEnv(t, "serve", cfg, s.Env())
	harness.StartWorkerEnv(t, "worker-1", cfg, harness.ConfigVars{}, s.Env())
	if a.DataDir == b.DataDir {
		t.Fatal("the two serves share a data_dir")
	}

	// Push through a, pull through b.
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1401})
	pushImage(t, im, a.Addr+"/local/s3/push:v1")
	out := t.TempDir()
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+b.Addr+"/local/s3/push:v1", "oci:"+out+":v1")
	harness.AssertSameLayout(t, im, out)

	// A chunked upload handed from a to b.
	data := harness.RandomBytes(1402, 3<<20+12345)
	d := harness.Digest(data)
	loc := openUpload(t, a.URL(), "local/s3/chunked")
	loc = patchChunk(t, a.URL(), loc, 0, data[:1<<20])
	loc = patchChunk(t, b.URL(), loc, 1<<20, data[1<<20:2<<20])
	loc = patchChunk(t, a.URL(), loc, 2<<20, data[2<<20:])
	u := resolve(t, b.URL(), loc)
	q := u.Query()
	q.Set("digest", d)
	u.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, u.String(), nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT to finish the upload on b: status %d", resp.StatusCode)
	}
	if got, n, err := getBlobHTTP(httpClient, a.URL(), "local/s3/chunked", d); err != nil || got != d || n != int64(len(data)) {
		t.Fatalf("GET the uploaded blob through a: %s, %d bytes, %v; want %s", got, n, err, d)
	}
	if left := s.Keys(t, "uploads/"); len(left) != 0 {
		t.Errorf("upload objects left after the commit: %q", left)
	}

	// A cold pull of one platform through a; the worker warms the rest.
	const repo = "e2e/s3warm"
	im2 := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 1403, LayerSize: 1 << 20})
	harness.Skopeo(t, "--override-os", "linux", "--override-arch", "amd64", "copy", "--src-tls-verify=false",
		"docker://"+a.Addr+"/hub/"+repo+":v1", "oci:"+t.TempDir()+":v1")
	keys := blobKeys(blobsOf(im2, "linux/amd64", "linux/arm64"))
	for _, m := range im2.Manifests {
		keys = append(keys, blobKeys([]string{m.Digest})...)
	}
	harness.Eventually(t, 30*time.Second, "every blob and manifest of both platforms in the bucket", func() error {
		if missing := missingKeys(t, s, keys); len(missing) > 0 {
			return fmt.Errorf("missing %q", missing)
		}
		return nil
	})
	if err := up.Stop(); err != nil {
		t.Logf("stop docker-registry: %v", err)
	}
	out2 := t.TempDir()
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+b.Addr+"/hub/"+repo+":v1", "oci:"+out2+":v1")
	harness.AssertSameLayout(t, im2, out2)

	// The one-shot jobs walk the bucket.
	if code, out := regwarmCLIEnv(t, s.Env(), "usage", "--config", b.ConfigPath); code != 0 || !strings.Contains(out, "s3/push") || !strings.Contains(out, repo) {
		t.Errorf("regwarm usage: exit %d, want 0 and both repositories\n%s", code, harness.LastLines(out, 30))
	}
	if code, out := regwarmCLIEnv(t, s.Env(), "scan", "--config", b.ConfigPath); code != 0 {
		t.Errorf("regwarm scan: exit %d, want 0\n%s", code, harness.LastLines(out, 30))
	}
}

// TestS3KillMidFill kills serve with SIGKILL while it streams a large
// cold blob from a throttled upstream: no object of that blob is left in
// the bucket, the next serve fills it whole, and `regwarm verify` finds
// nothing wrong.
func TestS3KillMidFill(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	s := harness.StartS3(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	data := harness.RandomBytes(1404, 24<<20)
	d := pushBlobHTTP(t, up.URL(), "e2e/big", data)
	th := startThrottle(t, up, 4<<20) // 6 s for the whole blob
	a := harness.StartRegwarmEnv(t, "serve", s3Config(s, "", th.URL), s.Env())

	resp, err := httpClient.Get(a.URL() + "/v2/hub/e2e/big/blobs/" + d)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET cold blob: status %d", resp.StatusCode)
	}
	got, err := io.ReadFull(resp.Body, make([]byte, 2<<20))
	if err != nil {
		t.Fatalf("first 2 MiB of the cold blob: %d bytes, %v", got, err)
	}
	a.Kill()
	resp.Body.Close()
	_, sent, _ := th.stats(d)
	t.Logf("killed serve after the upstream sent %d of %d bytes", sent, len(data))
	if sent >= int64(len(data)) {
		t.Fatalf("the upstream sent the whole blob before the kill; the test proves nothing")
	}
	for _, k := range s.Keys(t, "") {
		if strings.Contains(k, strings.TrimPrefix(d, "sha256:")) {
			t.Errorf("object %s of the interrupted blob is visible", k)
		}
	}

	a.Start()
	if got, n, err := getBlobHTTP(httpClient, a.URL(), "hub/e2e/big", d); err != nil || got != d || n != int64(len(data)) {
		t.Fatalf("GET after restart: %s, %d bytes, %v; want %s", got, n, err, d)
	}
	// The client has the last byte once it is verified; the PUT follows.
	harness.Eventually(t, 20*time.Second, "the refilled blob in the bucket", func() error {
		if missing := missingKeys(t, s, blobKeys([]string{d})); len(missing) > 0 {
			return fmt.Errorf("missing %q", missing)
		}
		return nil
	})
	code, out := regwarmCLIEnv(t, s.Env(), "verify", "--config", a.ConfigPath, "--format", "json")
	if code != 0 {
		t.Errorf("regwarm verify: exit %d, want 0\n%s", code, harness.LastLines(out, 30))
	}
	if !strings.Contains(out, d) {
		t.Errorf("the verify report does not name the blob it checked:\n%s", harness.LastLines(out, 30))
	}
}

// TestS3Redirect: with redirect: true a warm blob GET answers 307 to a
// presigned URL of the S3 server, which curl -L follows to the very
// bytes; HEAD still answers directly, and a cold blob streams as usual.
func TestS3Redirect(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	s := harness.StartS3(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	cold := harness.RandomBytes(1405, 300_000)
	dc := pushBlobHTTP(t, up.URL(), "e2e/cold", cold)
	rw := harness.StartRegwarmEnv(t, "serve", s3Config(s, "", up.URL(), "redirect: true"), s.Env())

	data := harness.RandomBytes(1406, 5<<20)
	d := pushBlobHTTP(t, rw.URL(), "local/s3/redirect", data)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(rw.URL() + "/v2/local/s3/redirect/blobs/" + d)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, s.Endpoint+"/") || !strings.Contains(loc, "X-Amz-Signature=") {
		t.Fatalf("GET warm blob: %d, Location %q; want 307 to a presigned URL of %s", resp.StatusCode, loc, s.Endpoint)
	}
	body := harness.Must(t, nil, "curl", "-sfL", rw.URL()+"/v2/local/s3/redirect/blobs/"+d)
	if harness.Digest([]byte(body)) != d {
		t.Errorf("curl -L fetched %d bytes that do not hash to %s", len(body), d)
	}
	if code := httpStatus(t, http.MethodHead, rw.URL()+"/v2/local/s3/redirect/blobs/"+d); code != http.StatusOK {
		t.Errorf("HEAD warm blob: %d, want 200", code)
	}
	// Unknown in this repository: no redirect, a 404.
	if code := httpStatus(t, http.MethodGet, rw.URL()+"/v2/local/s3/other/blobs/"+d); code != http.StatusNotFound {
		t.Errorf("GET blob of another repository: %d, want 404", code)
	}
	// A cold blob streams from the upstream.
	resp, err = noFollow.Get(rw.URL() + "/v2/hub/e2e/cold/blobs/" + dc)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := harness.DigestOf(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || got != dc {
		t.Errorf("GET cold blob: %d, %s, %v; want 200 and %s", resp.StatusCode, got, err, dc)
	}
}

// TestS3MigrateFromFilesystem: `regwarm migrate` copies a filesystem
// store into the bucket; regwarm on S3 then serves the pushed image and
// the cached one (with the upstream stopped) byte-identically, and a
// second run copies no content.
func TestS3MigrateFromFilesystem(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	s := harness.StartS3(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	const repo = "e2e/migrate"
	cached := pushNewImage(t, up, repo+":v1", harness.ImageOptions{Seed: 1407})
	fsCfg := fmt.Sprintf(harness.ConfigHeader+`registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: 5m}
  - {name: local, push: true}
connectors:
  - {name: up, url: %q, host: lab.local}
`, up.URL())
	old := harness.StartRegwarm(t, "serve", fsCfg)
	pushed := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1408})
	pushImage(t, pushed, old.Addr+"/local/team/app:v2")
	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+old.Addr+"/hub/"+repo+":v1", "oci:"+t.TempDir()+":v1")
	harness.Eventually(t, 20*time.Second, "the cached image stored", func() error {
		if missing := missingBlobs(old.DataDir, blobsOf(cached, "linux/amd64", "linux/arm64")); len(missing) > 0 {
			return fmt.Errorf("missing %v", missing)
		}
		return nil
	})
	if err := old.Stop(); err != nil {
		t.Logf("stop filesystem serve: %v", err)
	}

	rw := harness.StartRegwarmEnv(t, "serve", s3Config(s, "", up.URL()), s.Env())
	code, out := regwarmCLIEnv(t, s.Env(), "migrate", "--from", old.DataDir+"/store", "--config", rw.ConfigPath)
	if code != 0 || !strings.Contains(out, "copied 2 repositories") {
		t.Fatalf("regwarm migrate: exit %d\n%s", code, harness.LastLines(out, 20))
	}
	t.Logf("migrate: %s", harness.LastLines(out, 1))
	if err := up.Stop(); err != nil {
		t.Logf("stop docker-registry: %v", err)
	}
	for ref, im := range map[string]*harness.Image{"local/team/app:v2": pushed, "hub/" + repo + ":v1": cached} {
		out := t.TempDir()
		harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+rw.Addr+"/"+ref, "oci:"+out+":v1")
		harness.AssertSameLayout(t, im, out)
	}
	code, out = regwarmCLIEnv(t, s.Env(), "migrate", "--from", old.DataDir+"/store", "--config", rw.ConfigPath)
	if code != 0 || !strings.Contains(out, "(0 contents, 0 bytes copied)") {
		t.Errorf("second regwarm migrate: exit %d, want 0 with nothing copied\n%s", code, harness.LastLines(out, 5))
	}
}

// TestS3VerifyQuarantine: `regwarm verify` on S3 re-hashes stored
// content, reports a corrupted object and moves it to quarantine/, after
// which the blob reads as unknown rather than serving wrong bytes.
func TestS3VerifyQuarantine(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	s := harness.StartS3(t)
	rw := harness.StartRegwarmEnv(t, "serve", s3Config(s, "", "http://127.0.0.1:1"), s.Env())
	layer := harness.RandomBytes(1409, 1<<20)
	d := pushBlobHTTP(t, rw.URL(), "local/s3/verify", layer)
	m := pushManifestHTTP(t, rw.URL(), "local/s3/verify", "v1", d, int64(len(layer)))
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	key := blobKeys([]string{d})[0]
	if _, err := c.PutObject(t.Context(), s.Bucket, key, bytes.NewReader([]byte("bit rot")), 7, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	code, out := regwarmCLIEnv(t, s.Env(), "verify", "--config", rw.ConfigPath)
	if code != 1 || !strings.Contains(out, d) {
		t.Fatalf("regwarm verify of a corrupt blob: exit %d, want 1 naming %s\n%s", code, d, harness.LastLines(out, 30))
	}
	keys := s.Keys(t, "")
	if slices.Contains(keys, key) {
		t.Errorf("the corrupt object %s is still in place", key)
	}
	hx := strings.TrimPrefix(d, "sha256:")
	if !slices.ContainsFunc(keys, func(k string) bool { return strings.HasPrefix(k, "quarantine/sha256-"+hx+"-") }) {
		t.Errorf("no quarantine object for %s in %q", d, keys)
	}
	if code := httpStatus(t, http.MethodGet, rw.URL()+"/v2/local/s3/verify/blobs/"+d); code == http.StatusOK {
		t.Error("the quarantined blob is still served")
	}
	if code := httpStatus(t, http.MethodGet, rw.URL()+"/v2/local/s3/verify/manifests/"+m); code != http.StatusOK {
		t.Errorf("GET the intact manifest: %d, want 200", code)
	}
}
