package jobs

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/manifest"
)

// newScanWideIndex generates an index of n child manifests that exist
// nowhere (salt keeps indexes apart).
func newScanWideIndex(n int, salt string) scanObject {
	o := scanObject{mediaType: ocispec.MediaTypeImageIndex, blobs: map[digest.Digest][]byte{}}
	ix := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: o.mediaType,
		Manifests: make([]ocispec.Descriptor, n)}
	for i := range ix.Manifests {
		ix.Manifests[i] = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest,
			Digest: digest.FromString(fmt.Sprintf("%s child %d", salt, i)), Size: 100}
	}
	return o.finish(ix)
}

// TestScanTooManyReferences: a cached index whose children are all
// missing locally makes the scan ask upstream about each of them only up
// to the connector's max_manifest_entries; over it, the manifest is one
// too-many-references problem and nothing of it is asked (issue 11,
// finding 12: 20,000 entries made 20,000 HEADs).
func TestScanTooManyReferences(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		entries   int
		limit     string // connector setting; "" for the default (1000)
		wantHeads int
		tooMany   bool
	}{
		{"default limit, over", 1500, "", 0, true},
		{"over the cap of any manifest", manifest.MaxReferences * 2, "", 0, true},
		{"configured limit, over", 30, "max_manifest_entries: 20", 0, true},
		{"configured limit, at it", 20, "max_manifest_entries: 20", 20, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newScanFixture(t, "up")
			cfg := f.config(strings.Replace(scanHubYAML, `url: "URL(up)"`, `url: "URL(up)", `+tt.limit, 1))
			up := f.ups["up"]
			repo := scanRepoOf("hub", "wide")
			ix := newScanWideIndex(tt.entries, tt.name)
			f.seed(repo, nil, "up", ix, "v1")
			rep := f.scan(cfg)
			if n := up.Count(http.MethodHead, ""); n != tt.wantHeads {
				t.Errorf("%d upstream HEADs, want %d", n, tt.wantHeads)
			}
			s := rep.Summary
			if !tt.tooMany {
				if s.Problems != tt.entries || s.Unchecked != 0 {
					t.Errorf("summary %+v, want %d dangling", s, tt.entries)
				}
				return
			}
			if s.Problems != 0 || s.Manifests != 1 || len(rep.Problems) != 1 {
				t.Fatalf("summary %+v, problems %+v; want one listed problem, none dangling", s, rep.Problems)
			}
			p := rep.Problems[0]
			if p.Reason != ReasonTooManyReferences || p.Manifest != ix.digest.String() || p.Connector != "up" ||
				len(p.Tags) != 1 || p.Tags[0] != "v1" || p.Detail == "" {
				t.Errorf("problem %+v", p)
			}
			if s.References > 0 && s.Unchecked != tt.entries {
				t.Errorf("unchecked %d, want %d", s.Unchecked, tt.entries)
			}
			t.Logf("detail: %s", p.Detail)
		})
	}
}
