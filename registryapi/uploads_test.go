package registryapi

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// newUploadEnv serves registry hub where ci and dev may push (not delete)
// and ops may delete, with at most two open uploads per repository and per
// user, over a store whose sessions expire after an hour idle on now.
func newUploadEnv(t *testing.T, now func() time.Time) *env {
	t.Helper()
	dir := t.TempDir()
	htpasswd := writeHtpasswd(t, dir, "ci", "dev", "ops")
	cfg, err := config.Parse([]byte(`version: 1
data_dir: ` + dir + `
serve: {max_uploads: 2, upload_expiry: 1h}
registries:
  - {name: hub, default: true, push: true}
auth:
  htpasswd_file: ` + htpasswd + `
  rules:
    - {registry: hub, users: [ops], allow: [pull, push, delete]}
    - {registry: hub, users: ["*"], allow: [pull, push]}
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(filepath.Join(dir, "store"), store.WithClock(now), store.WithUploadExpiry(cfg.Serve.UploadExpiry.D()))
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(ConfigOf(cfg), st)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, root: filepath.Join(dir, "store")}
}

// writeHtpasswd writes dir/htpasswd with users whose password is
// "<user>-secret" and returns its path.
func writeHtpasswd(t *testing.T, dir string, users ...string) string {
	t.Helper()
	var lines []string
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-secret"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, u+":"+string(h))
	}
	path := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startAs opens an upload as user and returns its Location.
func (e *env) startAs(user, repo string) string {
	e.t.Helper()
	r := e.do("POST", "/v2/"+repo+"/blobs/uploads/", nil, "Authorization", basic(user))
	r.expect(e.t, 202, "")
	return r.header.Get("Location")
}

// TestUploadCancelWithPush: a user with push but not delete cancels their
// own upload; another pusher cannot touch it; a user with delete can
// cancel anyone's.
func TestUploadCancelWithPush(t *testing.T) {
	t.Parallel()
	e := newUploadEnv(t, time.Now)
	loc := e.startAs("ci", "app")
	e.do("DELETE", loc, nil, "Authorization", basic("dev")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	e.do("PATCH", loc, []byte("x"), "Authorization", basic("dev")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	e.do("GET", loc, nil, "Authorization", basic("dev")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	e.do("PUT", loc+"?digest="+digest.FromBytes(nil).String(), nil, "Authorization", basic("dev")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	e.do("DELETE", loc, nil).expect(t, 401, "UNAUTHORIZED")
	e.do("GET", loc, nil, "Authorization", basic("ci")).expect(t, 204, "")
	e.do("DELETE", loc, nil, "Authorization", basic("ci")).expect(t, 204, "")
	e.do("GET", loc, nil, "Authorization", basic("ci")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")

	loc = e.startAs("dev", "app")
	e.do("DELETE", loc, nil, "Authorization", basic("ops")).expect(t, 204, "")
	e.do("DELETE", loc, nil, "Authorization", basic("dev")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
}

// TestUploadCap: over serve.max_uploads open sessions a repository or a
// user gets 429 TOOMANYREQUESTS with a message saying what to do;
// finishing or cancelling one frees a place.
func TestUploadCap(t *testing.T) {
	t.Parallel()
	e := newUploadEnv(t, time.Now)
	first := e.startAs("ci", "app")
	e.startAs("dev", "app")
	r := e.do("POST", "/v2/app/blobs/uploads/", nil, "Authorization", basic("ops"))
	r.expect(t, 429, "TOOMANYREQUESTS")
	var eb errorBody
	if err := json.Unmarshal(r.body, &eb); err != nil || !strings.Contains(eb.Errors[0].Message, "serve.max_uploads: 2") {
		t.Errorf("message %s, want it to name serve.max_uploads", r.body)
	}
	e.startAs("ci", "other") // another repository, ci's second
	e.do("POST", "/v2/third/blobs/uploads/", nil, "Authorization", basic("ci")).expect(t, 429, "TOOMANYREQUESTS")

	data := []byte("layer")
	d := digest.FromBytes(data)
	e.do("PUT", first+"?digest="+d.String(), data, "Authorization", basic("ci")).expect(t, 201, "")
	e.startAs("ci", "third")
	// A monolithic upload (POST ?digest=) opens no session and is not capped.
	e.do("POST", "/v2/third/blobs/uploads/?digest="+d.String(), data, "Authorization", basic("ci")).expect(t, 201, "")
}

// TestUploadCapConcurrent: parallel starts never exceed the cap.
func TestUploadCapConcurrent(t *testing.T) {
	t.Parallel()
	e := newUploadEnv(t, time.Now)
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			r := e.do("POST", "/v2/app/blobs/uploads/", nil, "Authorization", basic("ops"))
			mu.Lock()
			codes[r.status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[202] != 2 || codes[429] != 6 {
		t.Errorf("statuses %v, want 2×202 and 6×429", codes)
	}
}

// TestUploadExpiredSession: a session idle past serve.upload_expiry is
// unknown to every upload request, and no longer counts against the cap.
func TestUploadExpiredSession(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	clock := time.Now()
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	e := newUploadEnv(t, now)
	loc := e.startAs("ci", "app")
	e.startAs("ci", "app")
	e.do("PATCH", loc, []byte("abc"), "Authorization", basic("ci")).expect(t, 202, "")
	mu.Lock()
	clock = clock.Add(61 * time.Minute)
	mu.Unlock()
	for _, m := range []string{"GET", "PATCH", "DELETE"} {
		t.Run(m, func(t *testing.T) {
			e.do(m, loc, []byte("d"), "Authorization", basic("ci")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
		})
	}
	e.do("PUT", fmt.Sprintf("%s?digest=%s", loc, digest.FromBytes([]byte("abc"))), nil, "Authorization", basic("ci")).expect(t, 404, "BLOB_UPLOAD_UNKNOWN")
	e.startAs("ci", "app")
	e.startAs("ci", "app")
}
