package connector

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/upstreamtest"
)

// referrerRequests counts the requests an upstream got for referrers:
// the API, tag lists and sha256-… fallback tags.
func referrerRequests(up *upstreamtest.Upstream, ds []digest.Digest) int {
	n := up.Count("GET", "/tags/list")
	for _, d := range ds {
		n += up.Count("GET", "/referrers/"+d.String()) + up.Count("GET", "/manifests/sha256-"+d.Encoded()) +
			up.Count("HEAD", "/manifests/sha256-"+d.Encoded())
	}
	return n
}

// TestReferrersFallbackOncePerConnector walks a two-platform image's
// referrers twice (the tag's job and a per-manifest job) on an upstream
// without the referrers API: the connector asks the API once, lists the
// repository's tags once, and asks no sha256-… tag that does not exist;
// a referrer stored under its fallback tag is still found.
func TestReferrersFallbackOncePerConnector(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	up.NoReferrersAPI()
	ix := up.AddIndex("app", "v1", []string{"linux/amd64", "linux/arm64"}, 100)
	var logs bytes.Buffer
	u, err := New(Config{Name: "up", URL: up.URL}, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ds := []digest.Digest{ix.Digest, ix.Children["linux/amd64"].Digest, ix.Children["linux/arm64"].Digest}
	ctx := context.Background()
	for range 2 {
		for _, d := range ds {
			refs, err := u.Referrers(ctx, "app", d)
			if err != nil || len(refs) != 0 {
				t.Fatalf("referrers of %s: %v, %v", d, refs, err)
			}
		}
	}
	if n := referrerRequests(up, ds); n > 2 {
		t.Fatalf("%d upstream requests for the referrers of %d manifests, twice; want at most 2", n, len(ds))
	}

	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("a registry without the referrers API is warned about:\n%s", logs.String())
	}

	// A signature under the fallback tag of a manifest of another image.
	other := up.AddImage("signed", "v1", 100)
	sig := up.AddImage("signed", "", 10)
	entry := fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"artifactType":"application/vnd.example.sig"}`,
		sig.Digest, len(sig.Manifest))
	up.AddManifest("signed", "sha256-"+other.Digest.Encoded(), "application/vnd.oci.image.index.v1+json",
		[]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+entry+`]}`))
	refs, err := u.Referrers(ctx, "signed", other.Digest)
	if err != nil || len(refs) != 1 || refs[0].Digest != sig.Digest {
		t.Fatalf("referrers under the fallback tag: %+v, %v", refs, err)
	}
	if refs, err := u.Referrers(ctx, "signed", sig.Digest); err != nil || len(refs) != 0 {
		t.Fatalf("referrers of the signature: %+v, %v", refs, err)
	}
}

// TestReferrersAPIProbed: an upstream with the API is asked once per
// manifest, through the API only.
func TestReferrersAPIProbed(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	ix := up.AddIndex("app", "v1", []string{"linux/amd64", "linux/arm64"}, 100)
	u, err := New(Config{Name: "up", URL: up.URL})
	if err != nil {
		t.Fatal(err)
	}
	ds := []digest.Digest{ix.Digest, ix.Children["linux/amd64"].Digest, ix.Children["linux/arm64"].Digest}
	for _, d := range ds {
		if _, err := u.Referrers(context.Background(), "app", d); err != nil {
			t.Fatal(err)
		}
	}
	if n, api := referrerRequests(up, ds), up.Count("GET", "/referrers/"+ds[0].String()); n != len(ds) || api != 1 {
		t.Fatalf("%d referrers requests (%d for the first manifest), want %d through the API", n, api, len(ds))
	}
}
