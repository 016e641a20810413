package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/regwarm/regwarm/e2e/harness"
)

// uploadsConfig is ConfigHeader with the upload settings in serve.
const uploadsConfig = `version: 1
data_dir: "{{.DataDir}}"
log: {level: debug, format: text}
serve: {listen: "{{.Addr}}", upload_expiry: 1h, max_uploads: 8}
metrics: {listen: "{{.MetricsAddr}}"}
nats: {embedded: {listen: "{{.NATSAddr}}"}}
registries:
  - {name: local, default: true, push: true}
` + jobsOff

// startSession opens an upload session in repo, sends it a chunk and
// returns its Location.
func startSession(t *testing.T, base, repo string, chunk []byte) string {
	t.Helper()
	loc := openUpload(t, base, repo)
	req, _ := http.NewRequest(http.MethodPatch, base+loc, bytes.NewReader(chunk))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH %s: status %d", loc, resp.StatusCode)
	}
	return loc
}

// openUpload starts an upload session in repo on the registry at base
// ("http://ADDR") and returns its Location.
func openUpload(t *testing.T, base, repo string) string {
	t.Helper()
	resp, err := httpClient.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload to %s: status %d", repo, resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

// uploadDirs lists the session directories in the store.
func uploadDirs(t *testing.T, dataDir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dataDir, "store", "uploads"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Name())
	}
	return ids
}

// TestUploadSessionsExpire: skopeo and crane push through upload sessions;
// abandoned sessions fill serve.max_uploads (429), and once left by a
// process that stopped they are discarded after a restart with a short
// serve.upload_expiry, freeing the cap; everything in data_dir is private
// to regwarm's user.
func TestUploadSessionsExpire(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	rw := harness.StartRegwarm(t, "serve", uploadsConfig)

	// Real clients push through chunked upload sessions.
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 41})
	pushImage(t, im, rw.Addr+"/local/skopeo:v1")
	harness.Crane(t, "push", "--insecure", "--index", im.Dir, rw.Addr+"/local/crane:v1")
	harness.Crane(t, "digest", "--insecure", rw.Addr+"/local/crane:v1")

	// Eight abandoned sessions fill the cap (anonymous clients share one).
	var locs []string
	for i := range 8 {
		locs = append(locs, startSession(t, rw.URL(), "abandoned", harness.RandomBytes(uint64(i), 1000)))
	}
	resp, err := httpClient.Post(rw.URL()+"/v2/abandoned/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("ninth session: status %d, want 429", resp.StatusCode)
	}

	if err := rw.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(uploadDirs(t, rw.DataDir)); n != 8 {
		t.Fatalf("%d sessions on disk after stop, want the 8 abandoned ones", n)
	}
	cfg, err := os.ReadFile(rw.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("upload_expiry: 1h"), []byte("upload_expiry: 2s"), 1)
	if err := os.WriteFile(rw.ConfigPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	rw.Start()
	harness.Eventually(t, 30*time.Second, "abandoned sessions discarded", func() error {
		if ids := uploadDirs(t, rw.DataDir); len(ids) > 0 {
			return fmt.Errorf("%d sessions left", len(ids))
		}
		return nil
	})
	if got := harness.ScrapeMetrics(t, rw.MetricsAddr).Value("regwarm_upload_sessions_expired_total"); got != 8 {
		t.Errorf("regwarm_upload_sessions_expired_total = %v, want 8", got)
	}
	req, _ := http.NewRequest(http.MethodPatch, rw.URL()+locs[0], strings.NewReader("late"))
	resp, err = httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("PATCH of an expired session: status %d, want 404", resp.StatusCode)
	}
	pushImage(t, harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 42}), rw.Addr+"/local/abandoned:v2")

	// Layers and everything else are readable by regwarm's user only.
	err = filepath.WalkDir(rw.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, want no group or other access", path, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestUpstreamCredentialsStayHome: a malicious upstream names a token
// realm on another host (here another port); regwarm still pulls through
// it (anonymous token) but the realm never sees the connector's password,
// until the config lists it in auth_hosts.
func TestUpstreamCredentialsStayHome(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	const secret = "connector-password-e2e"
	layer := harness.RandomBytes(77, 4096)
	d := harness.Digest(layer)

	var mu sync.Mutex
	var realmAuth []string
	realm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		realmAuth = append(realmAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token":"tok","access_token":"tok"}`)
	}))
	t.Cleanup(realm.Close)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm.URL+`/token",service="evil"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
			w.Header().Set("Content-Length", strconv.Itoa(len(layer)))
			_, _ = w.Write(layer)
			return
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(up.Close)

	pf := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pf, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		authHosts string
		wantCreds bool
	}{
		{"foreign realm", "[]", false},
		{"realm in auth_hosts", fmt.Sprintf("[%q]", realm.Listener.Addr().String()), true},
	} {
		mu.Lock()
		realmAuth = nil
		mu.Unlock()
		rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+fmt.Sprintf(`registries:
  - {name: hub, default: true, connectors: [up]}
connectors:
  - {name: up, url: %q, username: regwarm, password_file: %q, auth_hosts: %s}
`, up.URL, pf, tc.authHosts)+jobsOff)
		got, n, err := getBlobHTTP(httpClient, rw.URL(), "hub/app", d)
		if err != nil || got != d || n != int64(len(layer)) {
			t.Fatalf("%s: GET blob through regwarm = %s (%d bytes), %v", tc.name, got, n, err)
		}
		mu.Lock()
		seen := append([]string(nil), realmAuth...)
		mu.Unlock()
		if len(seen) == 0 {
			t.Fatalf("%s: the realm was never asked", tc.name)
		}
		creds := "Basic " + base64.StdEncoding.EncodeToString([]byte("regwarm:"+secret))
		sent := slices.Contains(seen, creds)
		if sent != tc.wantCreds {
			t.Errorf("%s: realm received %q; credentials sent = %v, want %v", tc.name, seen, sent, tc.wantCreds)
		}
		if !tc.wantCreds && slices.ContainsFunc(seen, func(a string) bool { return a != "" }) {
			t.Errorf("%s: realm received Authorization %q", tc.name, seen)
		}
		if err := rw.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUploadCancelByPusher: with auth, a user allowed to push but not to
// delete cancels their own upload session (after pushing an image with
// skopeo); another pusher cannot cancel it.
func TestUploadCancelByPusher(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	var lines []string
	for _, u := range []string{"ci", "dev"} {
		hash, err := bcrypt.GenerateFromPassword([]byte(u+"-secret"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, u+":"+string(hash))
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	writeFile(t, htpasswd, strings.Join(lines, "\n")+"\n")
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+fmt.Sprintf(`registries:
  - {name: local, default: true, push: true}
auth:
  htpasswd_file: %q
  rules:
    - {registry: local, users: ["*"], allow: [pull, push]}
`, htpasswd)+jobsOff)
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 43, Platforms: []string{hostPlatform()}})
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds", "ci:ci-secret",
		im.OCI(), "docker://"+rw.Addr+"/local/app:v1")

	do := func(user, method, path string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, rw.URL()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth(user, user+"-secret")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := do("ci", http.MethodPost, "/v2/app/blobs/uploads/")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: status %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	for _, tc := range []struct {
		user   string
		status int
	}{
		{"dev", http.StatusNotFound}, // not dev's session
		{"ci", http.StatusNoContent},
		{"ci", http.StatusNotFound}, // gone
	} {
		if got := do(tc.user, http.MethodDelete, loc).StatusCode; got != tc.status {
			t.Errorf("DELETE %s as %s: status %d, want %d", loc, tc.user, got, tc.status)
		}
	}
}
