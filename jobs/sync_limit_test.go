package jobs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

// TestSyncTooManyReferences: a sync follows at most the connector's
// max_manifest_entries index entries, layers and referrers of one
// manifest; over it the sync fails at once with a permanent, clear error
// and asks the upstream for none of them (issue 11, finding 12).
func TestSyncTooManyReferences(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// setup tags app:v1 and returns the paths (suffixes) the sync
		// must not ask the upstream for when it fails.
		setup func(up *upstreamtest.Upstream) []string
		limit int
		want  string // "" when the sync must succeed
	}{
		{"index over", wideIndex, 5, "6 index entries, more than max_manifest_entries (5) of connector up"},
		{"index at the limit", wideIndex, 6, ""},
		{"layers over", func(up *upstreamtest.Upstream) []string {
			up.AddImage("app", "v1", 1, 2, 3, 4, 5)
			return []string{"/blobs/"}
		}, 5, "6 references (config and layers), more than max_manifest_entries (5)"},
		{"referrers over", func(up *upstreamtest.Upstream) []string {
			img := up.AddImage("app", "v1", 10)
			up.AddBlob("app", []byte("{}")) // the signatures' empty config and layer
			var sigs []string
			for i := range 4 {
				sig := up.AddManifest("app", "", "application/vnd.oci.image.manifest.v1+json", []byte(fmt.Sprintf(
					`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig",`+
						`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},`+
						`"layers":[{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}],`+
						`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d},"annotations":{"n":"%d"}}`,
					img.Digest, len(img.Manifest), i)))
				sigs = append(sigs, "/manifests/"+sig.String())
			}
			return sigs
		}, 3, "4 referrers, more than max_manifest_entries (3)"},
		{"over the cap of any manifest", func(up *upstreamtest.Upstream) []string {
			ix := newScanWideIndex(manifest.MaxReferences+1, "sync")
			up.AddManifest("app", "v1", ix.mediaType, ix.data)
			return nil
		}, 10000, "too many references: 10001, at most 10000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := upstreamtest.New(t)
			never := tt.setup(up)
			cfg, err := config.Parse([]byte(fmt.Sprintf("version: 1\nregistries: [{name: hub, connectors: [up]}]\n"+
				"connectors: [{name: up, url: %q, max_manifest_entries: %d}]\n", up.URL, tt.limit)))
			if err != nil {
				t.Fatal(err)
			}
			st, err := store.NewFS(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			c := NewTestCache(t, cfg, st)
			s := NewSyncer(cfg, c)
			tgt, err := s.Resolve(Request{Image: "hub/app:v1"})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Run(context.Background(), tgt)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("sync: %v", err)
				}
				return
			}
			// Both are permanent: the worker terminates the job (daemon's permanentFailure).
			if !errors.Is(err, ErrTooManyReferences) && !errors.Is(err, manifest.ErrTooManyReferences) ||
				!strings.Contains(err.Error(), tt.want) {
				t.Fatalf("sync: %v; want a permanent ErrTooManyReferences saying %q", err, tt.want)
			}
			for _, p := range never {
				if n := up.Count(http.MethodGet, p) + up.Count(http.MethodHead, p); n != 0 {
					t.Errorf("the upstream was asked %d times for %s", n, p)
				}
			}
		})
	}
}

// wideIndex tags an index of six platforms as app:v1; none of its
// children may be asked for when the index is over the limit.
func wideIndex(up *upstreamtest.Upstream) []string {
	ix := up.AddIndex("app", "v1", []string{"linux/amd64", "linux/arm64", "linux/386", "linux/ppc64le", "linux/s390x", "linux/riscv64"}, 10)
	var out []string
	for _, c := range ix.Children {
		out = append(out, "/manifests/"+c.Digest.String())
	}
	return out
}
