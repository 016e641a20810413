package jobs

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
)

// The benchmark store: 1,000 repositories × 10 manifests × (1 config + 9
// layers) = 10,000 manifests and 100,000 references, every one local (see
// generateBenchStore).
const (
	benchRepos     = 1000
	benchManifests = 10
	benchLayers    = 9
	benchRefs      = benchRepos * benchManifests * (1 + benchLayers)
)

// benchStore is generated once per process and removed after the last
// expected run of BenchmarkScan (-count × -cpu runs; b.Loop calls the
// benchmark function once per run).
var benchStore struct {
	once sync.Once
	dir  string
	err  error
	mu   sync.Mutex
	runs int
}

// BenchmarkScan times a dangling-reference scan of an all-local store and
// reports references per second and the peak resident set during the scan.
//
//	go test -run '^$' -bench BenchmarkScan -benchtime 5x ./jobs/
func BenchmarkScan(b *testing.B) {
	benchStore.once.Do(func() {
		start := time.Now()
		benchStore.dir, benchStore.err = generateBenchStore()
		b.Logf("generated %d manifests, %d references in %v", benchRepos*benchManifests, benchRefs, time.Since(start).Round(time.Millisecond))
	})
	benchStore.mu.Lock()
	benchStore.runs++
	if benchStore.runs == expectedBenchRuns() && benchStore.dir != "" {
		b.Cleanup(func() { _ = os.RemoveAll(benchStore.dir) })
	}
	benchStore.mu.Unlock()
	if benchStore.err != nil {
		b.Fatal(benchStore.err)
	}
	st, err := store.NewFS(filepath.Join(benchStore.dir, "store"))
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: bench, connectors: [up]}
connectors:
  - {name: up, url: "http://127.0.0.1:1"}
`))
	if err != nil {
		b.Fatal(err)
	}
	noSource := func(string) (connector.Source, bool) { return nil, false }
	s := NewScanner(cfg, st, noSource, nil)

	resetPeakRSS := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	b.ReportAllocs()
	for b.Loop() {
		rep, err := s.Run(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if sm := rep.Summary; sm.References != benchRefs || sm.Local != benchRefs || sm.Manifests != benchRepos*benchManifests {
			b.Fatalf("scan saw %+v, want %d local references", sm, benchRefs)
		}
	}
	b.ReportMetric(float64(benchRefs)*float64(b.N)/b.Elapsed().Seconds(), "refs/s")
	if hwm, ok := procStatusKiB("VmHWM"); ok {
		b.ReportMetric(float64(hwm)/1024, "MiB-peak")
		if !resetPeakRSS {
			b.Log("could not reset VmHWM: MiB-peak includes generating the store")
		}
	}
}

// expectedBenchRuns is how many times BenchmarkScan runs in this process.
func expectedBenchRuns() int {
	count := 1
	if f := flag.Lookup("test.count"); f != nil {
		if n, err := strconv.Atoi(f.Value.String()); err == nil && n > 0 {
			count = n
		}
	}
	cpus := 1
	if f := flag.Lookup("test.cpu"); f != nil && f.Value.String() != "" {
		cpus = len(strings.Split(f.Value.String(), ","))
	}
	return count * cpus
}

// procStatusKiB reads a "Key:   123 kB" line of /proc/self/status.
func procStatusKiB(key string) (int64, bool) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), key+":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// benchPool is how many distinct blobs the benchmark store holds. Each
// repository references 100 distinct ones (so nothing is cached from one
// manifest to the next); repositories share content, as they do in a real
// store where blobs are deduplicated, while links and manifests are their
// own.
const benchPool = 2000

// generateBenchStore writes the benchmark store's files directly in the
// layout of store.FS (see its documentation): going through PutBlob would
// fsync 200,000 times. A file that is the same in many repositories (a
// blob's link, a manifest's link) is written once and hard-linked, since
// creating a file costs far more than linking one on some filesystems.
// Opening the result with store.NewFS and scanning it to 100,000 local
// references checks the layout.
func generateBenchStore() (string, error) {
	return generateBenchStoreWith(benchPool, 7)
}

// generateBenchStoreWith is generateBenchStore with pool distinct blobs,
// repository r starting at pool blob r × stride × (1+benchLayers).
func generateBenchStoreWith(pool, stride int) (string, error) {
	dir, err := os.MkdirTemp("", "regwarm-scan-bench-")
	if err != nil {
		return "", err
	}
	root := filepath.Join(dir, "store")
	if _, err := store.NewFS(root); err != nil {
		return dir, err
	}
	g := &benchGen{root: root, templates: filepath.Join(dir, "templates"), manifestLinks: map[int]string{}, stride: stride}
	if err := os.MkdirAll(g.templates, 0o755); err != nil {
		return dir, err
	}
	for i := range 256 {
		if err := os.MkdirAll(filepath.Join(root, "blobs", "sha256", fmt.Sprintf("%02x", i)), 0o755); err != nil {
			return dir, err
		}
	}
	for i := range pool {
		data := fmt.Appendf(nil, "layer %d", i)
		media := ocispec.MediaTypeImageLayerGzip
		if i%(1+benchLayers) == 0 {
			data, media = fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","bench":%d}`, i), ocispec.MediaTypeImageConfig
		}
		d := digest.FromBytes(data)
		if err := g.writeContent(d, data); err != nil {
			return dir, err
		}
		if err := os.WriteFile(filepath.Join(g.templates, d.Encoded()), []byte(d), 0o644); err != nil {
			return dir, err
		}
		g.pool = append(g.pool, ocispec.Descriptor{MediaType: media, Digest: d, Size: int64(len(data))})
	}
	var eg errgroup.Group
	eg.SetLimit(4)
	for r := range benchRepos {
		eg.Go(func() error { return g.repo(r) })
	}
	return dir, eg.Wait()
}

type benchGen struct {
	root, templates string
	pool            []ocispec.Descriptor // configs at multiples of 1+benchLayers
	stride          int

	mu            sync.Mutex
	manifestLinks map[int]string // manifest size → its link file's template
}

func (g *benchGen) writeContent(d digest.Digest, data []byte) error {
	hex := d.Encoded()
	return os.WriteFile(filepath.Join(g.root, "blobs", "sha256", hex[:2], hex), data, 0o644)
}

// manifestLink returns the template of the _manifests link of a manifest
// of size bytes (the link holds media type, size, source and time).
func (g *benchGen) manifestLink(size int) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p, ok := g.manifestLinks[size]; ok {
		return p, nil
	}
	link, err := json.Marshal(map[string]any{"mediaType": ocispec.MediaTypeImageManifest, "size": size, "source": "up",
		"time": time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		return "", err
	}
	p := filepath.Join(g.templates, fmt.Sprintf("manifest-%d", size))
	if err := os.WriteFile(p, link, 0o644); err != nil {
		return "", err
	}
	g.manifestLinks[size] = p
	return p, nil
}

// repo writes repository r: benchManifests manifests over 100 distinct
// pool blobs starting at a per-repository offset, each manifest annotated
// with its repository so that every manifest is distinct.
func (g *benchGen) repo(r int) error {
	repoDir := filepath.Join(g.root, "registries", "bench", "repos", fmt.Sprintf("team%02d", r%50), fmt.Sprintf("app%04d", r))
	links, manifests := filepath.Join(repoDir, "_blobs", "sha256"), filepath.Join(repoDir, "_manifests", "sha256")
	for _, d := range []string{links, manifests} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	per := 1 + benchLayers
	first := (r * g.stride * per) % len(g.pool) // a multiple of per: a config
	for m := range benchManifests {
		var descs []ocispec.Descriptor
		for i := range per {
			descs = append(descs, g.pool[(first+m*per+i)%len(g.pool)])
		}
		man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
			Config: descs[0], Layers: descs[1:], Annotations: map[string]string{"bench": fmt.Sprintf("r%d m%d", r, m)}}
		data, err := json.Marshal(man)
		if err != nil {
			return err
		}
		md := digest.FromBytes(data)
		if err := g.writeContent(md, data); err != nil {
			return err
		}
		tmpl, err := g.manifestLink(len(data))
		if err != nil {
			return err
		}
		if err := os.Link(tmpl, filepath.Join(manifests, md.Encoded())); err != nil {
			return err
		}
		for _, d := range descs {
			if err := os.Link(filepath.Join(g.templates, d.Digest.Encoded()), filepath.Join(links, d.Digest.Encoded())); err != nil {
				return err
			}
		}
	}
	return nil
}
