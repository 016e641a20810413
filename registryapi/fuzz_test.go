package registryapi

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/ref"
)

// FuzzParsePath: a request path (with ?ns=) from any client is either a
// route to a configured registry with a valid repository name, or an API
// error; never a panic, never a name that climbs out of its repository.
func FuzzParsePath(f *testing.F) {
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: hub, default: true, connectors: [dockerhub]}
  - {name: release, push: true}
connectors: [{name: dockerhub, url: "https://registry-1.docker.io", host: docker.io}]
`))
	if err != nil {
		f.Fatal(err)
	}
	h := &Handler{regs: cfg}
	d := "sha256:" + strings.Repeat("c", 64)
	for _, s := range []string{
		"/v2/", "/v2/_catalog", "/v2/library/alpine/manifests/3.20", "/v2/release/app/blobs/" + d,
		"/v2/hub/a/b/tags/list", "/v2/release/app/blobs/uploads/", "/v2/release/app/blobs/uploads/abc",
		"/v2/x/referrers/" + d, "/v2/alpine/manifests/latest?ns=docker.io", "/v2/../etc/blobs/x",
		"/v2/a%2fb/manifests/x", "/v2/release/manifests/x", "/v2//manifests/x", "/v3/x",
	} {
		f.Add(s)
	}
	known := []string{routePing, routeCatalog, routeManifest, routeBlob, routeUploadStart, routeTags, routeReferrers, routeOther}
	f.Fuzz(func(t *testing.T, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		rt, ae := h.parsePath(&http.Request{Method: http.MethodGet, URL: u})
		if !slices.Contains(known, rt.kind) {
			t.Fatalf("%q: route kind %q", target, rt.kind)
		}
		if ae != nil || rt.kind == routePing || rt.kind == routeCatalog {
			return
		}
		if _, ok := cfg.Registry(rt.repo.Registry); !ok {
			t.Fatalf("%q: registry %q is not configured", target, rt.repo.Registry)
		}
		if err := ref.ValidName(rt.repo.Name); err != nil {
			t.Fatalf("%q: repository %v", target, err)
		}
		if len(rt.name) > ref.MaxNameLength || !strings.HasSuffix(rt.name, rt.repo.Name) {
			t.Fatalf("%q: name %q for repository %q", target, rt.name, rt.repo.Name)
		}
		if strings.Contains(rt.ref, "/") {
			t.Fatalf("%q: reference %q", target, rt.ref)
		}
	})
}

// FuzzParseContentRange: an upload's Content-Range is an ordered pair of
// offsets or an error; never a panic or a negative offset.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"0-99", "bytes 5-9/100", "bytes=0-0", "9-5", "-1-5", "0-99999999999999999999", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		start, end, err := parseContentRange(h)
		if err != nil {
			return
		}
		if start < 0 || end < start {
			t.Fatalf("parseContentRange(%q) = %d-%d", h, start, end)
		}
	})
}
