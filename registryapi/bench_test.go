package registryapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
	"github.com/regwarm/regwarm/registryapi"
)

// The benchmarks here measure warm reads through the real handler on a real
// TCP listener, each against http.ServeFile of the same file measured in the
// same run, and report the ratio as the sub-benchmark "ratio":
//
//	go test -run '^$' -bench . ./registryapi
//
// A ratio needs both of its sub-benchmarks in the run (-bench 'BlobGet$'
// or 'BlobGet/', not 'BlobGet/regwarm'); with -count > 1 it compares the
// medians of their runs.

// benchConfig is a pull-through registry whose connector is never reached:
// everything the benchmarks read is in the store already (a warm cache).
// Should a read miss, the closed port fails it at once.
const benchConfig = `version: 1
registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: 1h}
connectors:
  - {name: up, url: "http://127.0.0.1:1"}
`

const benchRepoName = "bench/app"

var benchRepo = store.Repo{Registry: "hub", Name: benchRepoName}

// benchEnv serves one store two ways: regwarm (the registry API over the
// pull-through cache, wired as the daemon wires it) and a plain
// http.ServeFile of the store's files.
type benchEnv struct {
	root      string
	st        *store.FS
	regwarm   string // base URL of the registry API
	servefile string // base URL of the ServeFile server; paths are relative to root
	client    *http.Client
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	cfg, err := config.Parse([]byte(benchConfig))
	if err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	st, err := store.NewFS(root)
	if err != nil {
		b.Fatal(err)
	}
	c, err := cache.New(cacheConfig(b, cfg), st)
	if err != nil {
		b.Fatal(err)
	}
	h, err := registryapi.New(registryapi.ConfigOf(cfg), st, registryapi.WithReader(c.Serving()))
	if err != nil {
		b.Fatal(err)
	}
	api := httptest.NewServer(h)
	b.Cleanup(api.Close)
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join(root, filepath.FromSlash(r.URL.Path)))
	}))
	b.Cleanup(files.Close)
	tr := &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	return &benchEnv{root: root, st: st, regwarm: api.URL, servefile: files.URL, client: &http.Client{Transport: tr}}
}

// putBlob stores data as a blob of benchRepo and returns its digest.
func (e *benchEnv) putBlob(b *testing.B, data []byte) digest.Digest {
	b.Helper()
	d := digest.FromBytes(data)
	if err := e.st.PutBlob(context.Background(), benchRepo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	return d
}

// contentPath returns the URL path of d's file below the store root, as
// the filesystem store lays it out (see store.FS).
func (e *benchEnv) contentPath(b *testing.B, d digest.Digest) string {
	b.Helper()
	p := "/blobs/" + string(d.Algorithm()) + "/" + d.Encoded()[:2] + "/" + d.Encoded()
	if _, err := os.Stat(filepath.Join(e.root, filepath.FromSlash(p))); err != nil {
		b.Fatalf("the store layout changed, update contentPath: %v", err)
	}
	return p
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	p := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(seed)}).Read(p)
	return p
}

// getLoop GETs url until the benchmark has run long enough, checks each
// answer's status and length, discards the body and returns requests per
// second. b.Loop ramps up inside one call, so each call of a sub-benchmark's
// function is one reported result (one per -count).
func getLoop(b *testing.B, c *http.Client, url string, hdr http.Header, status int, want int64) float64 {
	b.Helper()
	buf := make([]byte, 1<<20)
	for b.Loop() {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		res, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := discard(res.Body, buf)
		_ = res.Body.Close()
		if err != nil {
			b.Fatalf("GET %s: reading body: %v", url, err)
		}
		if res.StatusCode != status || n != want {
			b.Fatalf("GET %s: status %d with %d bytes, want %d with %d", url, res.StatusCode, n, status, want)
		}
	}
	return float64(b.N) / b.Elapsed().Seconds()
}

// discard reads r to the end with buf and returns the byte count. Unlike
// io.Copy(io.Discard, r) it reads in large chunks, so the client costs as
// little as possible next to the server being measured.
func discard(r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// reportRatio is the body of a "ratio" sub-benchmark: it does no work and
// reports median(num)/median(den) as unit.
func reportRatio(b *testing.B, num, den []float64, unit string) {
	if len(num) == 0 || len(den) == 0 {
		b.Skip("the ratio needs both compared sub-benchmarks in the same run")
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(num)/median(den), unit)
}

// median returns the median of xs (not empty).
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// BenchmarkBlobGet compares a warm 64 MiB blob GET through regwarm (which
// hands the *os.File to the connection, so sendfile does the copy) with
// http.ServeFile of the same file. Target: ratio >= 0.9.
func BenchmarkBlobGet(b *testing.B) {
	const size = 64 << 20
	e := newBenchEnv(b)
	d := e.putBlob(b, randomBytes(size, 1))
	api := e.regwarm + "/v2/" + benchRepoName + "/blobs/" + d.String()
	file := e.servefile + e.contentPath(b, d)

	e.compareGets(b, api, file, nil, http.StatusOK, size)
}

// compareGets runs GETs of the same bytes through regwarm (api) and
// http.ServeFile (file) as sub-benchmarks, then reports their ratio.
func (e *benchEnv) compareGets(b *testing.B, api, file string, hdr http.Header, status int, n int64) {
	var rw, sf []float64
	b.Run("regwarm", func(b *testing.B) {
		b.SetBytes(n)
		rw = append(rw, getLoop(b, e.client, api, hdr, status, n))
	})
	b.Run("servefile", func(b *testing.B) {
		b.SetBytes(n)
		sf = append(sf, getLoop(b, e.client, file, hdr, status, n))
	})
	b.Run("ratio", func(b *testing.B) { reportRatio(b, rw, sf, "regwarm/servefile") })
}

// BenchmarkRangeGet compares a 1 MiB Range GET from the middle of a warm
// 64 MiB blob through regwarm with http.ServeFile of the same file.
func BenchmarkRangeGet(b *testing.B) {
	const size, chunk, off = 64 << 20, 1 << 20, 32<<20 + 12345
	e := newBenchEnv(b)
	d := e.putBlob(b, randomBytes(size, 2))
	hdr := http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, off+chunk-1)}}
	api := e.regwarm + "/v2/" + benchRepoName + "/blobs/" + d.String()
	file := e.servefile + e.contentPath(b, d)

	e.compareGets(b, api, file, hdr, http.StatusPartialContent, chunk)
}

// manifestAccept is what containerd and docker send for a manifest.
var manifestAccept = http.Header{"Accept": {strings.Join([]string{
	ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json", "*/*",
}, ", ")}}

// BenchmarkManifestGet compares warm manifest GETs through regwarm, by
// digest and by tag (a fresh cached tag), with http.ServeFile of the
// manifest's file, in requests per second.
func BenchmarkManifestGet(b *testing.B) {
	e := newBenchEnv(b)
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Size: 2}
	cfgDesc.Digest = e.putBlob(b, []byte("{}"))
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc}
	m.SchemaVersion = 2
	for i := range 5 {
		layer := randomBytes(4<<10, uint64(10+i))
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip,
			Digest: e.putBlob(b, layer), Size: int64(len(layer))})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	d := digest.FromBytes(raw)
	// Stored as a fill from the connector stores it: with its source, so the
	// tag is a cached one that is trusted for tag_ttl.
	err = e.st.PutManifest(context.Background(), benchRepo,
		store.Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Data: raw, Source: "up"},
		store.PutManifestOptions{Tag: "v1", Source: "up"})
	if err != nil {
		b.Fatal(err)
	}
	base := e.regwarm + "/v2/" + benchRepoName + "/manifests/"
	file := e.servefile + e.contentPath(b, d)
	want := int64(len(raw))

	var byDigest, byTag, sf []float64
	b.Run("regwarm-digest", func(b *testing.B) {
		byDigest = append(byDigest, reqPerSec(b, getLoop(b, e.client, base+d.String(), manifestAccept, http.StatusOK, want)))
	})
	b.Run("regwarm-tag", func(b *testing.B) {
		byTag = append(byTag, reqPerSec(b, getLoop(b, e.client, base+"v1", manifestAccept, http.StatusOK, want)))
	})
	b.Run("servefile", func(b *testing.B) {
		sf = append(sf, reqPerSec(b, getLoop(b, e.client, file, manifestAccept, http.StatusOK, want)))
	})
	b.Run("ratio-digest", func(b *testing.B) { reportRatio(b, byDigest, sf, "regwarm/servefile") })
	b.Run("ratio-tag", func(b *testing.B) { reportRatio(b, byTag, sf, "regwarm/servefile") })
}

// reqPerSec reports rate as req/s and returns it.
func reqPerSec(b *testing.B, rate float64) float64 {
	b.ReportMetric(rate, "req/s")
	return rate
}

// BenchmarkColdBlobGet compares a cold 64 MiB blob GET through regwarm (a
// new, empty store and cache per request, so every GET is a miss that
// streams from the upstream while storing the blob) with the same GET made
// directly to the upstream (an in-process fake registry serving from
// memory). It shows what a pull-through fill costs over the upstream alone;
// profile it with -cpuprofile.
func BenchmarkColdBlobGet(b *testing.B) {
	size := int64(coldBlobSize())
	up := upstreamtest.New(b)
	d := up.AddBlob(benchRepoName, randomBytes(int(size), 3))
	cfg, err := config.Parse([]byte(strings.Replace(benchConfig, "http://127.0.0.1:1", up.URL, 1)))
	if err != nil {
		b.Fatal(err)
	}
	var current atomic.Pointer[http.Handler]
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*current.Load()).ServeHTTP(w, r)
	}))
	b.Cleanup(api.Close)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	path := "/v2/" + benchRepoName + "/blobs/" + d.String()

	// fresh wires a new empty store and cache behind the API server.
	dirs := b.TempDir()
	var seq int
	fresh := func(b *testing.B) {
		seq++
		root := filepath.Join(dirs, strconv.Itoa(seq))
		if seq > 1 { // the previous store is done with
			_ = os.RemoveAll(filepath.Join(dirs, strconv.Itoa(seq-1)))
		}
		st, err := store.NewFS(root)
		if err != nil {
			b.Fatal(err)
		}
		c, err := cache.New(cacheConfig(b, cfg), st)
		if err != nil {
			b.Fatal(err)
		}
		h, err := registryapi.New(registryapi.ConfigOf(cfg), st, registryapi.WithReader(c.Serving()))
		if err != nil {
			b.Fatal(err)
		}
		var hh http.Handler = h
		current.Store(&hh)
	}

	var rw, direct []float64
	b.Run("regwarm", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, 1<<20)
		for b.Loop() {
			b.StopTimer()
			fresh(b)
			b.StartTimer()
			res, err := client.Get(api.URL + path)
			if err != nil {
				b.Fatal(err)
			}
			n, err := discard(res.Body, buf)
			_ = res.Body.Close()
			if err != nil || res.StatusCode != http.StatusOK || n != size {
				b.Fatalf("GET: status %d, %d bytes, %v", res.StatusCode, n, err)
			}
		}
		rw = append(rw, float64(b.N)/b.Elapsed().Seconds())
	})
	b.Run("direct", func(b *testing.B) {
		b.SetBytes(size)
		direct = append(direct, getLoop(b, client, up.URL+path, nil, http.StatusOK, size))
	})
	b.Run("ratio", func(b *testing.B) { reportRatio(b, rw, direct, "regwarm/direct") })
}

// coldBlobSize is BenchmarkColdBlobGet's blob size: 64 MiB, or
// REGWARM_BENCH_COLD_MIB.
func coldBlobSize() int {
	if v, err := strconv.Atoi(os.Getenv("REGWARM_BENCH_COLD_MIB")); err == nil && v > 0 {
		return v << 20
	}
	return 64 << 20
}
