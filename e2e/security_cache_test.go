package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/regwarm/regwarm/e2e/harness"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

// TestPrivateBlobNotServedThroughLyingUpstream: an image pushed with skopeo
// to a private registry (anonymous denied) cannot be read anonymously
// through a cache registry whose upstream redirects blob requests to a
// server that answers HEAD 200 for any digest (issue 11, finding 1).
func TestPrivateBlobNotServedThroughLyingUpstream(t *testing.T) {
	requireRegwarm(t)
	t.Parallel()
	// The "yes" server claims every blob on HEAD and has none on GET.
	yes := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/blobs/") {
			w.Header().Set("Content-Length", "1024")
			w.Header().Set("Docker-Content-Digest", r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:])
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`)
	}))
	t.Cleanup(yes.Close)
	up := upstreamtest.New(t)
	up.RedirectBlobs(yes.URL)

	hash, err := bcrypt.GenerateFromPassword([]byte("alice-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	writeFile(t, htpasswd, "alice:"+string(hash)+"\n")
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+fmt.Sprintf(`registries:
  - {name: private, push: true}
  - {name: hub, default: true, connectors: [up]}
connectors:
  - {name: up, url: %q}
auth:
  htpasswd_file: %q
  rules:
    - {registry: private, users: [alice], allow: [pull, push]}
    - {registry: hub, users: [anonymous], allow: [pull]}
`, up.URL, htpasswd))

	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 11, Platforms: []string{hostPlatform()}})
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds", "alice:alice-secret",
		im.OCI(), "docker://"+rw.Addr+"/private/secret/app:v1")

	anon := &http.Client{Transport: &http.Transport{}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	secret := blobsOf(im, hostPlatform())
	// The private registry itself refuses anonymous clients.
	if resp, err := send(anon, http.MethodGet, rw.URL()+"/v2/private/secret/app/blobs/"+secret[0], ""); err != nil {
		t.Fatal(err)
	} else if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("anonymous read of the private registry: status %d", resp.StatusCode)
	}
	for _, d := range secret {
		for _, rng := range []string{"", "bytes=0-99"} {
			req, err := http.NewRequest(http.MethodGet, rw.URL()+"/v2/hub/attacker/any/blobs/"+d, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rng != "" {
				req.Header.Set("Range", rng)
			}
			resp, err := anon.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, n, _ := harness.DigestOf(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("anonymous GET %s (Range %q) through the cache registry: status %d, %d bytes", d, rng, resp.StatusCode, n)
			}
			if got == d {
				t.Fatalf("private blob %s served anonymously through the cache registry", d)
			}
		}
	}
	// The owner still reads the image.
	harness.Skopeo(t, "inspect", "--tls-verify=false", "--creds", "alice:alice-secret", "docker://"+rw.Addr+"/private/secret/app:v1")
}
