package registryapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/registryapi"
)

// sink records what the API reports as pulled.
type sink struct {
	mu   sync.Mutex
	seen []digest.Digest
}

func (s *sink) Pulled(_ store.Repo, d digest.Digest) {
	s.mu.Lock()
	s.seen = append(s.seen, d)
	s.mu.Unlock()
}

// pullEnv is a push registry with one tagged manifest.
func pullEnv(t testing.TB, opts ...registryapi.Option) (http.Handler, *store.FS, digest.Digest) {
	cfg, err := config.Parse([]byte("version: 1\nregistries:\n  - {name: hub, default: true, push: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	repo := store.Repo{Registry: "hub", Name: "team/app"}
	cfgBlob := []byte("{}")
	cd := digest.FromBytes(cfgBlob)
	if err := st.PutBlob(ctx, repo, cd, 2, bytesReader(cfgBlob)); err != nil {
		t.Fatal(err)
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: 2}}
	m.SchemaVersion = 2
	raw, _ := json.Marshal(m)
	d := digest.FromBytes(raw)
	err = st.PutManifest(ctx, repo, store.Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Data: raw},
		store.PutManifestOptions{Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := registryapi.New(registryapi.ConfigOf(cfg), st, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return h, st, d
}

func TestManifestGetRecordsPull(t *testing.T) {
	t.Parallel()
	s := &sink{}
	h, _, d := pullEnv(t, registryapi.WithPulls(s))
	for _, tc := range []struct {
		method, ref string
		status      int
		pulled      bool
	}{
		{http.MethodGet, "v1", http.StatusOK, true},
		{http.MethodGet, d.String(), http.StatusOK, true},
		{http.MethodHead, "v1", http.StatusOK, false},
		{http.MethodGet, "nope", http.StatusNotFound, false},
		{http.MethodGet, digest.FromString("x").String(), http.StatusNotFound, false},
	} {
		s.mu.Lock()
		s.seen = nil
		s.mu.Unlock()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(tc.method, "/v2/team/app/manifests/"+tc.ref, nil))
		if w.Code != tc.status {
			t.Fatalf("%s %s: %d, want %d", tc.method, tc.ref, w.Code, tc.status)
		}
		if got := slices.Equal(s.seen, []digest.Digest{d}); got != tc.pulled {
			t.Errorf("%s %s: recorded %v, want pulled=%v", tc.method, tc.ref, s.seen, tc.pulled)
		}
	}
}

// BenchmarkManifestPullTracking measures a warm manifest GET by tag through
// the handler (in process, no network) without and with last-pulled
// tracking, and reports each one's p50 and p99 latency in µs:
//
//	go test -run '^$' -bench ManifestPullTracking -benchtime 200000x ./registryapi
func BenchmarkManifestPullTracking(b *testing.B) {
	for _, tracked := range []bool{false, true} {
		name := "off"
		if tracked {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			var opts []registryapi.Option
			var rec *pullRecorderBench
			if tracked {
				rec = newPullRecorderBench(b)
				opts = append(opts, registryapi.WithPulls(rec.r))
			}
			h, st, _ := pullEnv(b, opts...)
			if rec != nil {
				rec.start(b, st)
			}
			lat := make([]time.Duration, 0, b.N)
			req := httptest.NewRequest(http.MethodGet, "/v2/team/app/manifests/v1", nil)
			b.ResetTimer()
			for range b.N {
				w := httptest.NewRecorder()
				t0 := time.Now()
				h.ServeHTTP(w, req)
				lat = append(lat, time.Since(t0))
				if w.Code != http.StatusOK {
					b.Fatal(w.Code)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
			if rec != nil {
				rec.stop(b)
			}
		})
	}
}
