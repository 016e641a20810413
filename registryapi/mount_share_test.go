package registryapi_test

import (
	"bytes"
	"context"
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

// TestNoMountOnUpstreamHEAD: a cross-repository mount from a cache
// registry whose upstream claims every digest does not link a blob stored
// only for another registry (a private push) into the pushing repository;
// the client gets an upload session instead (issue 11, finding 1).
func TestNoMountOnUpstreamHEAD(t *testing.T) {
	t.Parallel()
	p := newPullThrough(t, "  - {name: private, push: true}\n  - {name: team, push: true}\n")
	secret := upstreamtest.RandomGzip(3000)
	d := digest.FromBytes(secret)
	if err := p.st.PutBlob(context.Background(), store.Repo{Registry: "private", Name: "secret/app"}, d, int64(len(secret)), bytes.NewReader(secret)); err != nil {
		t.Fatal(err)
	}
	p.up.Lie(int64(len(secret)))
	res, err := http.Post(p.url+"/v2/team/x/blobs/uploads/?mount="+d.String()+"&from=hub/any", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("mount from a lying cache registry: status %d, want 202 (an upload session)", res.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodHead, p.url+"/v2/team/x/blobs/"+d.String(), nil)
	if res, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("private blob in the pushing repository after the mount: status %d", res.StatusCode)
	}
}
