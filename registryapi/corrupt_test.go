package registryapi_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
	"github.com/regwarm/regwarm/registryapi"
)

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// corruptStored overwrites the stored content of d under an FS store root
// with bytes of the same length that do not hash to d.
func corruptStored(t *testing.T, root string, d digest.Digest) {
	t.Helper()
	p := filepath.Join(root, "blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded())
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x20
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// getURL GETs url with a fixed request id.
func getURL(t *testing.T, method, url string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Request-Id", "corrupt-test-1")
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

// A manifest corrupted on disk is our fault: a push registry answers 5xx
// without the store's text and logs it with the request id; a cache
// registry quarantines it and serves the right bytes fetched again.
func TestCorruptStoredManifest(t *testing.T) {
	up := upstreamtest.New(t)
	img := up.AddImage("app", "v1", 100)  // pushed to the push registry
	img2 := up.AddImage("app", "v2", 100) // cached by the cache registry
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: hub, default: true, connectors: [up]}
  - {name: local, push: true}
  - {name: both, push: true, connectors: [up]}
connectors:
  - {name: up, url: "` + up.URL + `"}
`))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	st, err := store.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	c, err := cache.New(cacheConfig(t, cfg), st, cache.WithLogger(log), cache.WithTimeouts(time.Minute, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	h, err := registryapi.New(registryapi.ConfigOf(cfg), st, registryapi.WithReader(c.Serving()), registryapi.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { srv.Close(); c.Wait() })

	// Push registry: the image pulled through hub, pushed to local; and a
	// variant the upstream does not have pushed to a cache registry that
	// takes pushes too.
	variant := bytes.Replace(img.Manifest, []byte(`{"schemaVersion":2,`), []byte(`{"schemaVersion":2,"annotations":{"pushed":"here"},`), 1)
	variantDigest := digest.FromBytes(variant)
	for _, d := range append([]digest.Digest{img.Config}, img.Layers...) {
		res, body := getURL(t, http.MethodGet, srv.URL+"/v2/hub/app/blobs/"+d.String(), nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET blob %s: %d", d, res.StatusCode)
		}
		for _, reg := range []string{"local", "both"} {
			if res, _ := getURL(t, http.MethodPost, srv.URL+"/v2/"+reg+"/app/blobs/uploads/?digest="+d.String(), body); res.StatusCode != http.StatusCreated {
				t.Fatalf("push blob %s to %s: %d", d, reg, res.StatusCode)
			}
		}
	}
	if res, _ := getURL(t, http.MethodPut, srv.URL+"/v2/local/app/manifests/v1", img.Manifest); res.StatusCode != http.StatusCreated {
		t.Fatalf("push manifest: %d", res.StatusCode)
	}
	if res, _ := getURL(t, http.MethodPut, srv.URL+"/v2/both/app/manifests/pushed", variant); res.StatusCode != http.StatusCreated {
		t.Fatalf("push manifest: %d", res.StatusCode)
	}
	corruptStored(t, root, img.Digest)
	corruptStored(t, root, variantDigest)
	for _, path := range []string{"/v2/local/app/manifests/v1", "/v2/local/app/manifests/" + img.Digest.String(),
		"/v2/both/app/manifests/pushed"} {
		res, body := getURL(t, http.MethodGet, srv.URL+path, nil)
		if res.StatusCode < 500 {
			t.Errorf("GET %s of a corrupt manifest: %d, want 5xx; body %s", path, res.StatusCode, body)
		}
		if strings.Contains(string(body), "hashes to") || strings.Contains(string(body), "stored manifest") {
			t.Errorf("GET %s: body leaks the store's text: %s", path, body)
		}
	}
	if l := logs.String(); !strings.Contains(l, "request_id=corrupt-test-1") || !strings.Contains(l, img.Digest.String()) {
		t.Errorf("no log line with the request id and digest for the corrupt manifest:\n%s", l)
	}

	// Cache registry: the manifest is cached, corrupted, then served right.
	if res, _ := getURL(t, http.MethodGet, srv.URL+"/v2/hub/app/manifests/v2", nil); res.StatusCode != http.StatusOK {
		t.Fatalf("GET hub manifest: %d", res.StatusCode)
	}
	c.Wait() // stored (write-behind)
	corruptStored(t, root, img2.Digest)
	for _, path := range []string{"/v2/hub/app/manifests/" + img2.Digest.String(), "/v2/hub/app/manifests/v2"} {
		res, body := getURL(t, http.MethodGet, srv.URL+path, nil)
		if res.StatusCode != http.StatusOK || !bytes.Equal(body, img2.Manifest) {
			t.Errorf("GET %s of a corrupt cached manifest: %d %s, want 200 and the upstream's bytes", path, res.StatusCode, body)
		}
	}
	if l := logs.String(); !strings.Contains(l, "corrupt manifest quarantined") {
		t.Errorf("no log line for the quarantine:\n%s", l)
	}
	if q, _ := filepath.Glob(filepath.Join(root, "quarantine", "*")); len(q) == 0 {
		t.Error("nothing quarantined")
	}
}
