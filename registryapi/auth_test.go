package registryapi

import (
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

func newAuthEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	htpasswd := writeHtpasswd(t, dir, "ci", "dev")
	cfg, err := config.Parse([]byte(`version: 1
data_dir: ` + dir + `
registries:
  - {name: hub, default: true, push: true}
  - {name: release, push: true}
auth:
  htpasswd_file: ` + htpasswd + `
  rules:
    - {registry: hub, users: [anonymous], allow: [pull]}
    - {registry: hub, users: ["*"], allow: [pull, push]}
    - {registry: release, users: [ci], allow: [pull, push, delete]}
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(filepath.Join(dir, "store"))
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

func basic(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+user+"-secret"))
}

func TestAuthRules(t *testing.T) {
	t.Parallel()
	e := newAuthEnv(t)
	tests := []struct {
		name, method, path, auth string
		status                   int
		code                     string
	}{
		{"ping without credentials", "GET", "/v2/", "", 401, "UNAUTHORIZED"},
		{"ping with credentials", "GET", "/v2/", basic("dev"), 200, ""},
		{"anonymous pull hub", "GET", "/v2/hub/x/tags/list", "", 404, "NAME_UNKNOWN"},
		{"anonymous push hub", "POST", "/v2/hub/x/blobs/uploads/", "", 401, "UNAUTHORIZED"},
		{"dev push hub", "POST", "/v2/hub/x/blobs/uploads/", basic("dev"), 202, ""},
		{"anonymous pull release", "GET", "/v2/release/x/tags/list", "", 401, "UNAUTHORIZED"},
		{"dev pull release", "GET", "/v2/release/x/tags/list", basic("dev"), 403, "DENIED"},
		{"ci push release", "POST", "/v2/release/x/blobs/uploads/", basic("ci"), 202, ""},
		{"wrong password", "GET", "/v2/hub/x/tags/list", "Basic " + base64.StdEncoding.EncodeToString([]byte("ci:nope")), 401, "UNAUTHORIZED"},
		{"unknown user", "GET", "/v2/", "Basic " + base64.StdEncoding.EncodeToString([]byte("eve:x")), 401, "UNAUTHORIZED"},
		{"forged token", "GET", "/v2/release/x/tags/list", "Bearer eyJzdWIiOiJjaSIsImV4cCI6OTk5OTk5OTk5OX0.AAAA", 401, "UNAUTHORIZED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.auth != "" {
				hdr = []string{"Authorization", tt.auth}
			}
			r := e.do(tt.method, tt.path, nil, hdr...)
			r.expect(t, tt.status, tt.code)
			if tt.status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer realm="http://`) {
				t.Errorf("challenge %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}
}

func TestTokenFlow(t *testing.T) {
	t.Parallel()
	e := newAuthEnv(t)
	r := e.do("GET", "/v2/release/x/tags/list", nil)
	r.expect(t, 401, "UNAUTHORIZED")
	if !strings.Contains(r.header.Get("WWW-Authenticate"), `/auth/token",service="regwarm",scope="repository:release/x:pull"`) {
		t.Fatalf("challenge %q", r.header.Get("WWW-Authenticate"))
	}
	tr := e.do("GET", "/auth/token?service=regwarm&scope=repository:release/x:pull,push", nil, "Authorization", basic("ci"))
	tr.expect(t, 200, "")
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(tr.body, &tok); err != nil || tok.Token == "" {
		t.Fatalf("token response %s", tr.body)
	}
	e.do("GET", "/v2/release/x/tags/list", nil, "Authorization", "Bearer "+tok.Token).expect(t, 404, "NAME_UNKNOWN")
	// A tampered token fails.
	e.do("GET", "/v2/release/x/tags/list", nil, "Authorization", "Bearer "+tok.Token[:len(tok.Token)-2]+"xx").expect(t, 401, "UNAUTHORIZED")
	// Bad credentials get no token; anonymous gets an anonymous token.
	e.do("GET", "/auth/token", nil, "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("ci:bad"))).expect(t, 401, "UNAUTHORIZED")
	anon := e.do("GET", "/auth/token", nil)
	anon.expect(t, 200, "")
	_ = json.Unmarshal(anon.body, &tok)
	e.do("GET", "/v2/release/x/tags/list", nil, "Authorization", "Bearer "+tok.Token).expect(t, 401, "UNAUTHORIZED")
}

func TestCatalogFiltered(t *testing.T) {
	t.Parallel()
	e := newAuthEnv(t)
	for _, name := range []string{"hub/a", "release/b"} {
		e.do("POST", "/v2/"+name+"/blobs/uploads/?digest=sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", []byte("hello"),
			"Authorization", basic("ci")).expect(t, 201, "")
	}
	r := e.do("GET", "/v2/_catalog", nil)
	if !strings.Contains(string(r.body), "hub/a") || strings.Contains(string(r.body), "release/b") {
		t.Fatalf("anonymous catalog: %s", r.body)
	}
	r = e.do("GET", "/v2/_catalog", nil, "Authorization", basic("ci"))
	if !strings.Contains(string(r.body), "release/b") {
		t.Fatalf("ci catalog: %s", r.body)
	}
}
