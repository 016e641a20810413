package jobs

import (
	"context"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
)

// gcBenchStores are generated once per process: "shared" is the scan
// benchmark's store (10,000 manifests, 100,000 references over 2,000
// distinct blobs), "distinct" the same with every reference its own blob
// (100,000 blobs).
var gcBenchStores struct {
	mu   sync.Mutex
	dirs map[string]string
}

func gcBenchStore(b *testing.B, name string) string {
	gcBenchStores.mu.Lock()
	defer gcBenchStores.mu.Unlock()
	if dir, ok := gcBenchStores.dirs[name]; ok {
		return dir
	}
	pool, stride := benchPool, 7
	if name == "distinct" {
		pool, stride = benchRefs, benchManifests
	}
	start := time.Now()
	dir, err := generateBenchStoreWith(pool, stride)
	if err != nil {
		_ = os.RemoveAll(dir)
		b.Fatal(err)
	}
	b.Logf("generated the %s store (%d blobs) in %v", name, pool, time.Since(start).Round(time.Millisecond))
	if gcBenchStores.dirs == nil {
		gcBenchStores.dirs = map[string]string{}
	}
	gcBenchStores.dirs[name] = dir
	return dir
}

// TestMain-free cleanup: the stores go when the process's last benchmark
// ends (b.Cleanup of the top-level benchmark).
func cleanupGCBenchStores() {
	gcBenchStores.mu.Lock()
	defer gcBenchStores.mu.Unlock()
	for _, d := range gcBenchStores.dirs {
		_ = os.RemoveAll(d)
	}
	gcBenchStores.dirs = nil
}

// BenchmarkGC times a full gc run (mark every manifest, list every link
// and blob, remove nothing: everything is in use) over the benchmark
// stores, without and with a retention policy (which adds the inventory),
// and reports references per second and the peak resident set. Run it
// with BenchmarkScan for the ratio on the same machine:
//
//	go test -run '^$' -bench 'BenchmarkScan|BenchmarkGC' -benchtime 3x ./jobs/
func BenchmarkGC(b *testing.B) {
	b.Cleanup(cleanupGCBenchStores)
	for _, tc := range []struct{ name, store, retention string }{
		{"shared", "shared", ""},
		{"distinct", "distinct", ""},
		{"distinct-retention", "distinct", "\n    retention: {max_bytes: 1TiB}"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir := gcBenchStore(b, tc.store)
			st, err := store.NewFS(filepath.Join(dir, "store"))
			if err != nil {
				b.Fatal(err)
			}
			cfg, err := config.Parse([]byte(`version: 1
registries:
  - name: bench
    connectors: [up]` + tc.retention + `
connectors:
  - {name: up, url: "http://127.0.0.1:1"}
`))
			if err != nil {
				b.Fatal(err)
			}
			// A delay longer than the store's age: every manifest is a root.
			g, err := NewGC(cfg, st, nil, WithGCDelay(100*365*24*time.Hour))
			if err != nil {
				b.Fatal(err)
			}
			debug.FreeOSMemory() // the peak is this run's, not the generator's
			resetPeakRSS := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
			b.ReportAllocs()
			for b.Loop() {
				rep, err := g.Run(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if len(rep.Removed) != 0 || rep.GC.ByRegistry["bench"].BytesAfter == 0 {
					b.Fatalf("gc removed %d items, summary %+v", len(rep.Removed), rep.GC)
				}
			}
			b.ReportMetric(float64(benchRefs)*float64(b.N)/b.Elapsed().Seconds(), "refs/s")
			if hwm, ok := procStatusKiB("VmHWM"); ok && resetPeakRSS {
				b.ReportMetric(float64(hwm)/1024, "MiB-peak")
			}
		})
	}
	// The dangling scan over the distinct store, for the ratio on the
	// same store (BenchmarkScan uses the shared one).
	b.Run("scan-distinct", func(b *testing.B) {
		dir := gcBenchStore(b, "distinct")
		st, err := store.NewFS(filepath.Join(dir, "store"))
		if err != nil {
			b.Fatal(err)
		}
		cfg, err := config.Parse([]byte("version: 1\nregistries: [{name: bench, connectors: [up]}]\nconnectors: [{name: up, url: \"http://127.0.0.1:1\"}]\n"))
		if err != nil {
			b.Fatal(err)
		}
		s := NewScanner(cfg, st, func(string) (connector.Source, bool) { return nil, false }, nil)
		debug.FreeOSMemory()
		resetPeakRSS := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
		b.ReportAllocs()
		for b.Loop() {
			rep, err := s.Run(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if rep.Summary.Local != benchRefs {
				b.Fatalf("scan saw %+v", rep.Summary)
			}
		}
		b.ReportMetric(float64(benchRefs)*float64(b.N)/b.Elapsed().Seconds(), "refs/s")
		if hwm, ok := procStatusKiB("VmHWM"); ok && resetPeakRSS {
			b.ReportMetric(float64(hwm)/1024, "MiB-peak")
		}
	})
}
