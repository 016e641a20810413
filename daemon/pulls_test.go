package daemon

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
	"github.com/regwarm/regwarm/jobs"
	"github.com/regwarm/regwarm/registryapi"
)

// TestWorkerSyncIsNotAPull wires the registry API and a syncer over one
// cache as Run does: a worker sync stores the image without recording a
// pull; a client's manifest GET records one.
func TestWorkerSyncIsNotAPull(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.AddImage("team/app", "v1", 64)
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: hub, default: true, connectors: [up]}
connectors:
  - {name: up, url: "` + up.URL + `"}
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), labels(cfg))
	log := slog.New(slog.DiscardHandler)
	cc, err := CacheConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cc, st, cache.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Wait)
	rec, err := newPullRecorder(st, m, log)
	if err != nil || rec == nil {
		t.Fatalf("recorder: %v, %v", rec, err)
	}
	api, err := registryapi.New(apiConfig(cfg), st, apiOptions(c, rec, log, m)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	repo := store.Repo{Registry: "hub", Name: "team/app"}
	reg, _ := cfg.Registry("hub")
	res, err := jobs.NewSyncer(cfg, c).Run(ctx, jobs.NewTarget(reg, "team/app", "v1"))
	if err != nil {
		t.Fatalf("sync: %v (%+v)", err, res)
	}
	if _, err := st.Manifest(ctx, repo, img.Digest); err != nil {
		t.Fatalf("the sync did not store the manifest: %v", err)
	}
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.LastPulled(ctx, repo); len(got) != 0 {
		t.Fatalf("a worker sync counted as a pull: %v", got)
	}
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(method, "/v2/team/app/manifests/v1", nil)
		r.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		api.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", method, w.Code, strings.TrimSpace(w.Body.String()))
		}
		if err := rec.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := st.LastPulled(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		if _, pulled := got[img.Digest]; pulled != (method == http.MethodGet) {
			t.Fatalf("after a client %s: last pulled %v", method, got)
		}
	}
}
