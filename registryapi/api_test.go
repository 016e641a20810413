package registryapi

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

const testConfig = `
version: 1
registries:
  - {name: local, default: true, push: true}
  - {name: other, push: true}
  - {name: mirror, connectors: [up]}
connectors:
  - {name: up, url: "http://127.0.0.1:1", host: mirror.example}
`

type env struct {
	t    *testing.T
	srv  *httptest.Server
	root string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cfg, err := config.Parse([]byte(testConfig))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	root := t.TempDir()
	st, err := store.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(ConfigOf(cfg), st)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, root: root}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(method, path string, body []byte, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

// expect checks the status and, for errors, the OCI code in the body.
func (r resp) expect(t *testing.T, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if code == "" {
		return
	}
	var eb errorBody
	if err := json.Unmarshal(r.body, &eb); err != nil || len(eb.Errors) == 0 {
		t.Fatalf("no OCI error body: %q", r.body)
	}
	if eb.Errors[0].Code != code {
		t.Fatalf("code %s, want %s (%s)", eb.Errors[0].Code, code, eb.Errors[0].Message)
	}
}

// pushBlob uploads data monolithically to repo (client name) and returns its digest.
func (e *env) pushBlob(name string, data []byte) digest.Digest {
	e.t.Helper()
	d := digest.FromBytes(data)
	e.do("POST", "/v2/"+name+"/blobs/uploads/?digest="+d.String(), data).expect(e.t, 201, "")
	return d
}

// image pushes a config and one layer and returns a manifest for them.
func (e *env) image(name string, layer []byte) []byte {
	e.t.Helper()
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := e.pushBlob(name, cfg)
	ld := e.pushBlob(name, layer)
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}`,
		cd, len(cfg), ld, len(layer)))
}

// snapshot lists every file under the store root with its size.
func (e *env) snapshot() string {
	e.t.Helper()
	var lines []string
	_ = filepath.WalkDir(e.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, _ := d.Info()
		lines = append(lines, fmt.Sprintf("%s %d", strings.TrimPrefix(p, e.root), info.Size()))
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestPing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.do("GET", "/v2/", nil)
	r.expect(t, 200, "")
	if r.header.Get("Docker-Distribution-Api-Version") != "registry/2.0" {
		t.Errorf("missing Docker-Distribution-Api-Version")
	}
}

func TestPushPullRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	layer := bytes.Repeat([]byte("layer"), 1000)
	m := e.image("local/app", layer)
	r := e.do("PUT", "/v2/local/app/manifests/v1", m, "Content-Type", "application/vnd.oci.image.manifest.v1+json")
	r.expect(t, 201, "")
	md := digest.FromBytes(m)
	if got := r.header.Get("Docker-Content-Digest"); got != md.String() {
		t.Fatalf("digest header %q, want %s", got, md)
	}
	// By tag and digest, prefixed and through the default registry.
	for _, p := range []string{"/v2/local/app/manifests/v1", "/v2/app/manifests/v1", "/v2/app/manifests/" + md.String()} {
		g := e.do("GET", p, nil)
		g.expect(t, 200, "")
		if !bytes.Equal(g.body, m) || g.header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" {
			t.Fatalf("GET %s: wrong body or type %q", p, g.header.Get("Content-Type"))
		}
	}
	h := e.do("HEAD", "/v2/app/manifests/v1", nil)
	h.expect(t, 200, "")
	if len(h.body) != 0 || h.header.Get("Content-Length") != fmt.Sprint(len(m)) {
		t.Fatalf("HEAD: body %d bytes, length %q", len(h.body), h.header.Get("Content-Length"))
	}
	ld := digest.FromBytes(layer)
	b := e.do("GET", "/v2/app/blobs/"+ld.String(), nil)
	b.expect(t, 200, "")
	if !bytes.Equal(b.body, layer) {
		t.Fatal("blob body differs")
	}
	// The other registry does not see it.
	e.do("GET", "/v2/other/app/manifests/v1", nil).expect(t, 404, "MANIFEST_UNKNOWN")
	e.do("GET", "/v2/other/app/blobs/"+ld.String(), nil).expect(t, 404, "BLOB_UNKNOWN")
	// Tag listing and catalog.
	tl := e.do("GET", "/v2/local/app/tags/list", nil)
	tl.expect(t, 200, "")
	if !strings.Contains(string(tl.body), `"tags":["v1"]`) {
		t.Fatalf("tags: %s", tl.body)
	}
	cat := e.do("GET", "/v2/_catalog", nil)
	if !strings.Contains(string(cat.body), `"local/app"`) {
		t.Fatalf("catalog: %s", cat.body)
	}
	// Delete by tag, then by digest.
	e.do("DELETE", "/v2/local/app/manifests/v1", nil).expect(t, 202, "")
	e.do("GET", "/v2/local/app/manifests/v1", nil).expect(t, 404, "MANIFEST_UNKNOWN")
	e.do("DELETE", "/v2/local/app/manifests/"+md.String(), nil).expect(t, 202, "")
	e.do("GET", "/v2/local/app/manifests/"+md.String(), nil).expect(t, 404, "MANIFEST_UNKNOWN")
}

func TestRange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := []byte("0123456789abcdef")
	d := e.pushBlob("local/r", data)
	p := "/v2/local/r/blobs/" + d.String()
	r := e.do("GET", p, nil, "Range", "bytes=2-5")
	r.expect(t, 206, "")
	if string(r.body) != "2345" || r.header.Get("Content-Range") != "bytes 2-5/16" {
		t.Fatalf("range body %q, Content-Range %q", r.body, r.header.Get("Content-Range"))
	}
	if r = e.do("GET", p, nil, "Range", "bytes=-3"); string(r.body) != "def" {
		t.Fatalf("suffix range body %q", r.body)
	}
	for _, bad := range []string{"bytes=500-0", "bytes=5000-10000", "bytes=0-1,3-4", "bytes=x-y", "lines=1-2", "bytes=16-"} {
		r := e.do("GET", p, nil, "Range", bad)
		r.expect(t, 416, "RANGE_INVALID")
		if r.header.Get("Content-Range") != "bytes */16" {
			t.Errorf("Range %q: Content-Range %q", bad, r.header.Get("Content-Range"))
		}
	}
}

func TestChunkedUpload(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := bytes.Repeat([]byte("0123456789"), 100)
	r := e.do("POST", "/v2/local/c/blobs/uploads/", nil)
	r.expect(t, 202, "")
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, "/v2/local/c/blobs/uploads/") {
		t.Fatalf("Location %q", loc)
	}
	e.do("PATCH", loc, data[:400], "Content-Range", "0-399", "Content-Type", "application/octet-stream").expect(t, 202, "")
	// Out of order: starts at 500 instead of 400.
	e.do("PATCH", loc, data[500:600], "Content-Range", "500-599").expect(t, 416, "RANGE_INVALID")
	r = e.do("GET", loc, nil)
	r.expect(t, 204, "")
	if r.header.Get("Range") != "0-399" {
		t.Fatalf("status Range %q", r.header.Get("Range"))
	}
	e.do("PATCH", loc, data[400:], "Content-Range", "400-999").expect(t, 202, "")
	e.do("PUT", loc+"?digest="+digest.FromString("wrong").String(), nil).expect(t, 400, "DIGEST_INVALID")
	d := digest.FromBytes(data)
	r = e.do("PUT", loc+"?digest="+d.String(), nil)
	r.expect(t, 201, "")
	if r.header.Get("Location") != "/v2/local/c/blobs/"+d.String() {
		t.Fatalf("Location %q", r.header.Get("Location"))
	}
	if g := e.do("GET", "/v2/local/c/blobs/"+d.String(), nil); !bytes.Equal(g.body, data) {
		t.Fatal("chunked blob differs")
	}
}

func TestSHA512AndMount(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := []byte("sha512 content")
	sum := sha512.Sum512(data)
	d := digest.Digest("sha512:" + hex.EncodeToString(sum[:]))
	e.do("POST", "/v2/local/a/blobs/uploads/?digest="+d.String(), data).expect(t, 201, "")
	e.do("HEAD", "/v2/local/a/blobs/"+d.String(), nil).expect(t, 200, "")
	e.do("HEAD", "/v2/local/b/blobs/"+d.String(), nil).expect(t, 404, "")
	r := e.do("POST", "/v2/local/b/blobs/uploads/?mount="+d.String()+"&from=local/a", nil)
	r.expect(t, 201, "")
	e.do("HEAD", "/v2/local/b/blobs/"+d.String(), nil).expect(t, 200, "")
	// Mount from a repository without the blob starts a normal upload.
	e.do("POST", "/v2/local/c/blobs/uploads/?mount="+d.String()+"&from=local/none", nil).expect(t, 202, "")
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.image("local/ref", []byte("base"))
	md := digest.FromBytes(m)
	e.do("PUT", "/v2/local/ref/manifests/v1", m, "Content-Type", "application/vnd.oci.image.manifest.v1+json").expect(t, 201, "")
	emptyCfg := e.pushBlob("local/ref", []byte("{}"))
	art := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.test.sig",`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[],`+
		`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d}}`, emptyCfg, md, len(m)))
	r := e.do("PUT", "/v2/local/ref/manifests/"+digest.FromBytes(art).String(), art, "Content-Type", "application/vnd.oci.image.manifest.v1+json")
	r.expect(t, 201, "")
	if r.header.Get("OCI-Subject") != md.String() {
		t.Fatalf("OCI-Subject %q", r.header.Get("OCI-Subject"))
	}
	g := e.do("GET", "/v2/local/ref/referrers/"+md.String(), nil)
	g.expect(t, 200, "")
	if !strings.Contains(string(g.body), "application/vnd.test.sig") || g.header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("referrers: %s", g.body)
	}
	f := e.do("GET", "/v2/local/ref/referrers/"+md.String()+"?artifactType=application/vnd.other", nil)
	if f.header.Get("OCI-Filters-Applied") != "artifactType" || strings.Contains(string(f.body), "vnd.test.sig") {
		t.Fatalf("filtered referrers: %s", f.body)
	}
}

func TestTagPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.image("local/p", []byte("p"))
	for _, tag := range []string{"c", "a", "b", "d"} {
		e.do("PUT", "/v2/local/p/manifests/"+tag, m, "Content-Type", "application/vnd.oci.image.manifest.v1+json").expect(t, 201, "")
	}
	r := e.do("GET", "/v2/local/p/tags/list?n=2", nil)
	if !strings.Contains(string(r.body), `["a","b"]`) || !strings.Contains(r.header.Get("Link"), "last=b") {
		t.Fatalf("page 1: %s Link %q", r.body, r.header.Get("Link"))
	}
	r = e.do("GET", "/v2/local/p/tags/list?n=2&last=b", nil)
	if !strings.Contains(string(r.body), `["c","d"]`) {
		t.Fatalf("page 2: %s", r.body)
	}
	e.do("GET", "/v2/local/nothing/tags/list", nil).expect(t, 404, "NAME_UNKNOWN")
}

// TestBadInput sends malformed requests; each gets its OCI error and leaves
// the store exactly as it was.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.image("local/ok", []byte("ok"))
	e.do("PUT", "/v2/local/ok/manifests/v1", m, "Content-Type", "application/vnd.oci.image.manifest.v1+json").expect(t, 201, "")
	before := e.snapshot()
	missing := digest.FromString("missing")
	big := append([]byte(`{"schemaVersion":2,"x":"`), bytes.Repeat([]byte("a"), 4<<20)...)
	badRef := bytes.Replace(m, []byte(digest.FromBytes([]byte("ok")).String()), []byte(missing.String()), 1)
	mt := "application/vnd.oci.image.manifest.v1+json"
	tests := []struct {
		name, method, path string
		body               []byte
		hdr                []string
		status             int
		code               string
	}{
		{"uppercase name", "GET", "/v2/local/BAD/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"dot dot", "GET", "/v2/local/../etc/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"encoded slash", "GET", "/v2/local/a%2F..%2Fb/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"encoded dots", "GET", "/v2/local/%2e%2e/blobs/" + missing.String(), nil, nil, 400, "NAME_INVALID"},
		{"double slash", "PUT", "/v2/local//x/manifests/v1", m, []string{"Content-Type", mt}, 400, "NAME_INVALID"},
		{"registry only", "GET", "/v2/other/manifests/v1", nil, nil, 404, "NAME_UNKNOWN"},
		{"bad digest get", "GET", "/v2/local/ok/blobs/sha256:xyz", nil, nil, 400, "DIGEST_INVALID"},
		{"bad digest traversal", "GET", "/v2/local/ok/blobs/sha256:..", nil, nil, 400, "DIGEST_INVALID"},
		{"unknown algorithm", "GET", "/v2/local/ok/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", nil, nil, 400, "DIGEST_INVALID"},
		{"unknown blob", "GET", "/v2/local/ok/blobs/" + missing.String(), nil, nil, 404, "BLOB_UNKNOWN"},
		{"unknown manifest", "GET", "/v2/local/ok/manifests/" + missing.String(), nil, nil, 404, "MANIFEST_UNKNOWN"},
		{"bad digest manifest put", "PUT", "/v2/local/ok/manifests/sha256:baddigeststring", m, []string{"Content-Type", mt}, 400, "DIGEST_INVALID"},
		{"digest mismatch put", "PUT", "/v2/local/ok/manifests/" + missing.String(), m, []string{"Content-Type", mt}, 400, "DIGEST_INVALID"},
		{"malformed json", "PUT", "/v2/local/ok/manifests/v2", []byte(`{"schemaVersion":2,`), []string{"Content-Type", mt}, 400, "MANIFEST_INVALID"},
		{"not a manifest", "PUT", "/v2/local/ok/manifests/v2", []byte(`[1,2]`), []string{"Content-Type", mt}, 400, "MANIFEST_INVALID"},
		{"schema1", "PUT", "/v2/local/ok/manifests/v2", []byte(`{"schemaVersion":1}`), []string{"Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws"}, 400, "MANIFEST_INVALID"},
		{"oversized manifest", "PUT", "/v2/local/ok/manifests/v2", big, []string{"Content-Type", mt}, 413, "SIZE_INVALID"},
		{"missing blob", "PUT", "/v2/local/ok/manifests/v2", badRef, []string{"Content-Type", mt}, 404, "MANIFEST_BLOB_UNKNOWN"},
		{"bad tag", "PUT", "/v2/local/ok/manifests/-bad", m, []string{"Content-Type", mt}, 400, "TAG_INVALID"},
		{"blob digest mismatch", "POST", "/v2/local/ok/blobs/uploads/?digest=" + missing.String(), []byte("other"), nil, 400, "DIGEST_INVALID"},
		{"unknown upload", "PATCH", "/v2/local/ok/blobs/uploads/00000000-0000-0000-0000-000000000000", []byte("x"), nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"traversal upload id", "PATCH", "/v2/local/ok/blobs/uploads/..", []byte("x"), nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"read-only registry", "PUT", "/v2/mirror/ok/manifests/v1", m, []string{"Content-Type", mt}, 403, "DENIED"},
		{"read-only upload", "POST", "/v2/mirror/ok/blobs/uploads/", nil, nil, 403, "DENIED"},
		{"read-only delete", "DELETE", "/v2/mirror/ok/manifests/v1", nil, nil, 403, "DENIED"},
		{"method", "POST", "/v2/local/ok/manifests/v1", nil, nil, 405, "UNSUPPORTED"},
		{"unknown path", "GET", "/v2/local/ok/whatever", nil, nil, 404, "NAME_UNKNOWN"},
		{"bad n", "GET", "/v2/local/ok/tags/list?n=-1", nil, nil, 400, "PAGINATION_NUMBER_INVALID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.do(tt.method, tt.path, tt.body, tt.hdr...).expect(t, tt.status, tt.code)
		})
	}
	if after := e.snapshot(); after != before {
		t.Fatalf("store changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat(filepath.Join(e.root, "..", "etc")); err == nil {
		t.Fatal("traversal created a directory outside the root")
	}
}
