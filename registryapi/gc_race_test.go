package registryapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// collectingStore removes a blob the moment a manifest is stored, as a
// garbage collection between the push's reference check and its store
// would (failure injection).
type collectingStore struct {
	*store.FS
	victim digest.Digest
}

func (s *collectingStore) PutManifest(ctx context.Context, repo store.Repo, m store.Manifest, opts store.PutManifestOptions) error {
	if err := s.FS.PutManifest(ctx, repo, m, opts); err != nil {
		return err
	}
	if s.victim != "" {
		_, _ = s.RemoveBlobLink(ctx, repo, s.victim, time.Now().Add(time.Hour))
		_, _, _ = s.RemoveBlob(ctx, s.victim, time.Now().Add(time.Hour))
	}
	return nil
}

// TestManifestPutRaceWithCollection: a blob collected while its manifest
// is pushed makes the push fail with MANIFEST_BLOB_UNKNOWN and leaves no
// manifest or tag that points at nothing; pushing the blob again and
// then the manifest works.
func TestManifestPutRaceWithCollection(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	fs, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &collectingStore{FS: fs}
	h, err := New(ConfigOf(cfg), st)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e := &env{t: t, srv: srv}

	layer := []byte("a layer gc takes away")
	man := e.image("app", layer)
	st.victim = digest.FromBytes(layer)
	res := e.do(http.MethodPut, "/v2/app/manifests/v1", man, "Content-Type", "application/vnd.oci.image.manifest.v1+json")
	res.expect(t, http.StatusNotFound, "MANIFEST_BLOB_UNKNOWN")
	if res := e.do(http.MethodGet, "/v2/app/manifests/v1", nil); res.status != http.StatusNotFound {
		t.Errorf("tag after the failed push: %d, want 404", res.status)
	}
	md := digest.FromBytes(man)
	if res := e.do(http.MethodGet, "/v2/app/manifests/"+md.String(), nil); res.status != http.StatusNotFound {
		t.Errorf("manifest after the failed push: %d, want 404", res.status)
	}

	st.victim = ""
	e.pushBlob("app", layer)
	res = e.do(http.MethodPut, "/v2/app/manifests/v1", man, "Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if res.status != http.StatusCreated {
		t.Fatalf("PUT after uploading again: %d %s", res.status, res.body)
	}
}
