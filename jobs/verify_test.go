package jobs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
	"github.com/regwarm/regwarm/jobs"
)

// verifyNow is the clock of the fixture's store: it names quarantined files.
var verifyNow = time.Unix(1700000000, 0).UTC()

const layerType = "application/vnd.oci.image.layer.v1.tar"

// verifyFixture is a filesystem store with registry "hub" pulling from a
// fake upstream through a cache, and registry "local" taking pushes.
type verifyFixture struct {
	root  string
	st    *store.FS
	up    *upstreamtest.Upstream
	cfg   *config.Config
	cache *cache.Cache
}

func newVerifyFixture(t *testing.T, extraYAML string) *verifyFixture {
	t.Helper()
	up := upstreamtest.New(t)
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: hub, default: true, connectors: [up]}
  - {name: local, push: true}
connectors:
  - {name: up, url: "` + up.URL + `"}
` + extraYAML))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	st, err := store.NewFS(root, store.WithClock(func() time.Time { return verifyNow }))
	if err != nil {
		t.Fatal(err)
	}
	c := jobs.NewTestCache(t, cfg, st)
	return &verifyFixture{root: root, st: st, up: up, cfg: cfg, cache: c}
}

// verifier returns a Verifier that re-fetches through the fixture's cache,
// as background work (as the daemon wires it).
func (f *verifyFixture) verifier(opts ...jobs.VerifyOption) *jobs.Verifier {
	fetchBlob := func(ctx context.Context, repo store.Repo, d digest.Digest) error {
		_, _, err := f.cache.Warming().Fetch(ctx, repo, d)
		return err
	}
	fetchManifest := func(ctx context.Context, repo store.Repo, d digest.Digest) error {
		_, err := f.cache.Warming().Manifest(ctx, repo, d)
		return err
	}
	all := append([]jobs.VerifyOption{jobs.WithManifestFetch(fetchManifest)}, opts...)
	return jobs.NewVerifier(f.cfg, f.st, fetchBlob, nil, all...)
}

// pull brings img into hub/<name> through the cache.
func (f *verifyFixture) pull(t *testing.T, name string, img upstreamtest.Image) {
	t.Helper()
	ctx := context.Background()
	repo := store.Repo{Registry: "hub", Name: name}
	client := f.cache.Serving().Request("")
	if _, err := client.Manifest(ctx, repo, img.Digest); err != nil {
		t.Fatalf("pull manifest: %v", err)
	}
	for _, d := range append([]digest.Digest{img.Config}, img.Layers...) {
		b, err := client.OpenBlob(ctx, repo, d)
		if err != nil {
			t.Fatalf("pull blob %s: %v", d, err)
		}
		_, err = io.Copy(io.Discard, b)
		_ = b.Close()
		if err != nil {
			t.Fatalf("pull blob %s: %v", d, err)
		}
	}
	f.cache.Wait() // a client's pull is stored write-behind
}

// pushed is an image pushed into the store.
type pushed struct {
	repo     store.Repo
	manifest digest.Digest
	config   digest.Digest
	layers   []digest.Digest
}

// push stores an image with the given layers in local/<name>.
func (f *verifyFixture) push(t *testing.T, name string, layers ...[]byte) pushed {
	t.Helper()
	p := pushed{repo: store.Repo{Registry: "local", Name: name}}
	cfg := []byte(`{"architecture":"amd64","os":"linux","image":"` + name + `"}`)
	p.config = f.putBlob(t, p.repo, cfg)
	var descs []string
	for _, l := range layers {
		d := f.putBlob(t, p.repo, l)
		p.layers = append(p.layers, d)
		descs = append(descs, fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d}`, layerType, d, len(l)))
	}
	data := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		manifest.OCIManifest, p.config, len(cfg), strings.Join(descs, ",")))
	p.manifest = digest.FromBytes(data)
	m := store.Manifest{MediaType: manifest.OCIManifest, Digest: p.manifest, Data: data}
	if err := f.st.PutManifest(context.Background(), p.repo, m, store.PutManifestOptions{Tag: "v1"}); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	return p
}

func (f *verifyFixture) putBlob(t *testing.T, repo store.Repo, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	if err := f.st.PutBlob(context.Background(), repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatalf("PutBlob: %v", err)
	}
	return d
}

// file is where the store keeps d (the layout in store.FS's doc).
func (f *verifyFixture) file(d digest.Digest) string {
	return filepath.Join(f.root, "blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded())
}

// quarantined is where the store quarantines d at verifyNow.
func (f *verifyFixture) quarantined(d digest.Digest) string {
	return filepath.Join(f.root, "quarantine", "sha256-"+d.Encoded()+"-"+strconv.FormatInt(verifyNow.Unix(), 10))
}

// flip corrupts the stored content of d, keeping its size, and returns it.
func (f *verifyFixture) flip(t *testing.T, d digest.Digest) []byte {
	t.Helper()
	data, err := os.ReadFile(f.file(d))
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(f.file(d), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// totals counts the blobs in the store and their bytes.
func (f *verifyFixture) totals(t *testing.T) (int, int64) {
	t.Helper()
	var n int
	var size int64
	err := f.st.Blobs(context.Background(), func(_ digest.Digest, s int64) error {
		n++
		size += s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, size
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// byDigest orders content-pass problems as Run lists them.
func byDigest(ps []jobs.Problem) []jobs.Problem {
	slices.SortFunc(ps, func(a, b jobs.Problem) int { return strings.Compare(a.Digest, b.Digest) })
	return ps
}

func checkProblems(t *testing.T, got, want []jobs.Problem) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n got %d:", len(got))
		for _, p := range got {
			t.Errorf("  %+v", p)
		}
		t.Errorf(" want %d:", len(want))
		for _, p := range want {
			t.Errorf("  %+v", p)
		}
	}
}

// readBack checks that d is served in repo with the right bytes.
func readBack(t *testing.T, st store.Store, repo store.Repo, d digest.Digest) {
	t.Helper()
	b, err := st.OpenBlob(context.Background(), repo, d)
	if err != nil {
		t.Fatalf("OpenBlob %s: %v", d, err)
	}
	defer b.Close()
	h := d.Algorithm().Digester()
	if _, err := io.Copy(h.Hash(), b); err != nil || h.Digest() != d {
		t.Fatalf("blob %s reads back as %s, %v", d, h.Digest(), err)
	}
}

// TestVerifyFindsDamage damages a store in every way verify knows and
// checks that the report names each damage exactly, and nothing else.
func TestVerifyFindsDamage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newVerifyFixture(t, "")
	app := f.up.AddImage("app", "v1", 64<<10, 32<<10)
	f.pull(t, "app", app)
	tool := f.up.AddImage("tool", "v1", 16<<10)
	f.pull(t, "tool", tool)
	local := f.push(t, "pushed", randomBytes(4<<10))
	orphan := randomBytes(3000)
	orphanD := f.putBlob(t, local.repo, orphan)

	badLayer := f.flip(t, app.Layers[0])                       // corrupt blob, upstream still has it
	f.flip(t, tool.Digest)                                     // corrupt manifest, upstream still has it
	if err := os.Remove(f.file(local.layers[0])); err != nil { // referenced, absent
		t.Fatal(err)
	}
	layerGets := f.up.Count("GET", "/blobs/"+app.Layers[0].String())

	clock := []time.Time{verifyNow.Add(time.Minute), verifyNow.Add(2 * time.Minute)}
	next := func() time.Time { t := clock[0]; clock = clock[1:]; return t }
	rep, err := f.verifier(jobs.WithVerifyClock(next)).Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	absent := jobs.Problem{Registry: "local", Repository: "pushed", Manifest: local.manifest.String(),
		Missing: local.layers[0].String(), MediaType: layerType, Reason: jobs.ReasonAbsent}
	unreferenced := jobs.Problem{Reason: jobs.ReasonUnreferenced, Digest: orphanD.String(), Size: int64(len(orphan))}
	want := []jobs.Problem{
		// Reference pass, by repository: hub/app is fine.
		{Registry: "hub", Repository: "tool", Manifest: tool.Digest.String(), Reason: jobs.ReasonCorrupt,
			Digest: tool.Digest.String(), Size: int64(len(tool.Manifest)),
			Detail: "quarantined to " + f.quarantined(tool.Digest) + "; re-fetched from upstream"},
		absent,
	}
	// Content pass, by digest.
	want = append(want, byDigest([]jobs.Problem{
		{Registry: "hub", Repository: "app", Manifest: app.Digest.String(), Reason: jobs.ReasonCorrupt,
			Digest: app.Layers[0].String(), Size: int64(len(badLayer)),
			Detail: "quarantined to " + f.quarantined(app.Layers[0]) + "; re-fetched from upstream"},
		unreferenced,
	})...)
	checkProblems(t, rep.Problems, want)

	blobs, size := f.totals(t)
	wantSummary := jobs.Summary{Registries: 2, Manifests: 3, Problems: 3, ByRegistry: map[string]int{"hub": 2, "local": 1},
		Blobs: blobs, Bytes: size, Corrupt: 2, Quarantined: 2, Refetched: 2, Absent: 1,
		Unreferenced: 1, UnreferencedBytes: int64(len(orphan))}
	if !reflect.DeepEqual(rep.Summary, wantSummary) {
		t.Errorf("summary\n got %+v\nwant %+v", rep.Summary, wantSummary)
	}
	if blobs != 10 {
		t.Errorf("store holds %d blobs after repair, want 10", blobs)
	}
	if rep.Job != jobs.JobVerify || rep.Version != jobs.ReportVersion || rep.Clean() ||
		!rep.Started.Equal(verifyNow.Add(time.Minute)) || !rep.Finished.Equal(verifyNow.Add(2*time.Minute)) {
		t.Errorf("report header: job %q version %d clean %v started %v finished %v",
			rep.Job, rep.Version, rep.Clean(), rep.Started, rep.Finished)
	}

	// The corrupt bytes are in quarantine; good bytes are served again.
	if q, err := os.ReadFile(f.quarantined(app.Layers[0])); err != nil || !bytes.Equal(q, badLayer) {
		t.Errorf("quarantined layer: %v (equal %v)", err, bytes.Equal(q, badLayer))
	}
	if got := f.up.Count("GET", "/blobs/"+app.Layers[0].String()); got != layerGets+1 {
		t.Errorf("layer fetched %d more times, want 1", got-layerGets)
	}
	readBack(t, f.st, store.Repo{Registry: "hub", Name: "app"}, app.Layers[0])
	if m, err := f.st.Manifest(ctx, store.Repo{Registry: "hub", Name: "tool"}, tool.Digest); err != nil || !bytes.Equal(m.Data, tool.Manifest) {
		t.Errorf("re-fetched manifest: %v", err)
	}

	// A second run finds only what verify does not repair.
	rep, err = f.verifier().Run(ctx)
	if err != nil {
		t.Fatalf("second Run: %v", err)
	}
	checkProblems(t, rep.Problems, []jobs.Problem{absent, unreferenced})
	if s := rep.Summary; s.Corrupt != 0 || s.Quarantined != 0 || s.Refetched != 0 || s.Absent != 1 || s.Problems != 1 || s.Blobs != blobs {
		t.Errorf("second summary %+v", s)
	}
}

// TestVerifyCleanStore verifies an intact store: no problems at all.
func TestVerifyCleanStore(t *testing.T) {
	t.Parallel()
	f := newVerifyFixture(t, "")
	img := f.up.AddImage("library/alpine", "3", 100<<10, 5<<10)
	f.pull(t, "library/alpine", img)
	f.push(t, "team/app", randomBytes(10<<10), randomBytes(1<<10))
	requests := f.up.Total()

	rep, err := f.verifier().Run(context.Background())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.Problems == nil || len(rep.Problems) != 0 {
		t.Errorf("problems %#v, want an empty list", rep.Problems)
	}
	blobs, size := f.totals(t)
	want := jobs.Summary{Registries: 2, Manifests: 2, ByRegistry: map[string]int{"hub": 0, "local": 0}, Blobs: blobs, Bytes: size}
	if !reflect.DeepEqual(rep.Summary, want) || blobs != 8 {
		t.Errorf("summary\n got %+v\nwant %+v (8 blobs)", rep.Summary, want)
	}
	if !rep.Clean() {
		t.Error("clean store reported unclean")
	}
	if f.up.Total() != requests {
		t.Errorf("verify of a clean store made %d upstream requests", f.up.Total()-requests)
	}
}

// noQuarantine hides the store's Quarantiner ability.
type noQuarantine struct {
	store.Store
	store.ContentReader
}

// TestVerifyCorruptWithoutRepair covers corrupt content that cannot be
// repaired: no re-fetch, a failing re-fetch, unreferenced content, and a
// store that cannot quarantine.
func TestVerifyCorruptWithoutRepair(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		fetch      func(context.Context, store.Repo, digest.Digest) error
		hide       bool   // the store cannot quarantine
		layerNote  string // appended to the layer's detail
		quarantine bool
	}{
		{name: "no re-fetch", quarantine: true},
		{name: "re-fetch fails", quarantine: true, layerNote: "; re-fetch failed: upstream gone",
			fetch: func(context.Context, store.Repo, digest.Digest) error { return errors.New("upstream gone") }},
		{name: "store cannot quarantine", hide: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newVerifyFixture(t, "")
			img := f.push(t, "pushed", randomBytes(20<<10))
			layer := img.layers[0]
			orphan := f.putBlob(t, img.repo, randomBytes(2<<10))
			f.flip(t, layer)
			f.flip(t, orphan)

			var st store.Store = f.st
			if tc.hide {
				st = noQuarantine{Store: f.st, ContentReader: f.st}
			}
			rep, err := jobs.NewVerifier(f.cfg, st, tc.fetch, nil).Run(ctx)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			layerDetail := "quarantined to " + f.quarantined(layer) + tc.layerNote
			orphanDetail := "quarantined to " + f.quarantined(orphan) + "; not referenced by any manifest"
			if !tc.quarantine {
				layerDetail = "not quarantined: the store cannot quarantine"
				orphanDetail = layerDetail
			}
			want := byDigest([]jobs.Problem{
				{Registry: "local", Repository: "pushed", Manifest: img.manifest.String(), Reason: jobs.ReasonCorrupt,
					Digest: layer.String(), Size: 20 << 10, Detail: layerDetail},
				{Reason: jobs.ReasonCorrupt, Digest: orphan.String(), Size: 2 << 10, Detail: orphanDetail},
			})
			checkProblems(t, rep.Problems, want)
			quarantined := 0
			if tc.quarantine {
				quarantined = 2
			}
			if s := rep.Summary; s.Corrupt != 2 || s.Quarantined != quarantined || s.Refetched != 0 ||
				s.Unreferenced != 0 || s.Problems != 2 || s.ByRegistry["local"] != 1 || s.Blobs != 4 {
				t.Errorf("summary %+v", s)
			}

			_, statErr := f.st.StatBlob(ctx, img.repo, layer)
			b, openErr := f.st.OpenBlob(ctx, img.repo, layer)
			if openErr == nil {
				b.Close()
			}
			if !tc.quarantine {
				if statErr != nil || openErr != nil {
					t.Errorf("unquarantined blob: StatBlob %v, OpenBlob %v", statErr, openErr)
				}
				return
			}
			// Quarantined content is never served again.
			if !errors.Is(statErr, store.ErrBlobUnknown) || !errors.Is(openErr, store.ErrBlobUnknown) {
				t.Errorf("after quarantine: StatBlob %v, OpenBlob %v; want %v", statErr, openErr, store.ErrBlobUnknown)
			}
			// The manifest is intact, and its layer now absent.
			rep, err = jobs.NewVerifier(f.cfg, st, nil, nil).Run(ctx)
			if err != nil {
				t.Fatalf("second Run: %v", err)
			}
			checkProblems(t, rep.Problems, []jobs.Problem{{Registry: "local", Repository: "pushed",
				Manifest: img.manifest.String(), Missing: layer.String(), MediaType: layerType, Reason: jobs.ReasonAbsent}})
		})
	}
}

// TestVerifyNeedsContentReader refuses a store that cannot read content by
// digest rather than skip what it cannot hash.
func TestVerifyNeedsContentReader(t *testing.T) {
	t.Parallel()
	f := newVerifyFixture(t, "")
	type plain struct{ store.Store }
	if _, err := jobs.NewVerifier(f.cfg, plain{f.st}, nil, nil).Run(context.Background()); err == nil {
		t.Fatal("Run over a store without OpenContent succeeded")
	}
}

// TestVerifyRateLimit checks that hashing keeps to the configured rate:
// about 3 MiB at 1 MiB/s with a 1 MiB burst takes at least two seconds.
func TestVerifyRateLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		opts []jobs.VerifyOption
	}{
		{name: "option", opts: []jobs.VerifyOption{jobs.WithBytesPerSecond(1 << 20)}},
		// jobs.verify.max_bytes_per_second reaches the job as this option
		// (daemon.jobFuncs).
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newVerifyFixture(t, tc.yaml)
			f.push(t, "big", randomBytes(1<<20), randomBytes(1<<20), randomBytes(1<<20))
			start := time.Now()
			rep, err := f.verifier(tc.opts...).Run(context.Background())
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			elapsed := time.Since(start)
			if rep.Summary.Bytes < 3<<20 {
				t.Fatalf("verified %d bytes, want at least 3 MiB", rep.Summary.Bytes)
			}
			// 3 MiB beyond a 1 MiB burst at 1 MiB/s: 2 s; allow for
			// coarse timers, never for a missing limit.
			if elapsed < 1800*time.Millisecond {
				t.Errorf("verified %d bytes at 1 MiB/s in %v, want at least ~2s", rep.Summary.Bytes, elapsed)
			}
		})
	}
}

// TestVerifyCancelledMidHash cancels a run while it hashes one large blob.
func TestVerifyCancelledMidHash(t *testing.T) {
	t.Parallel()
	f := newVerifyFixture(t, "")
	f.push(t, "big", randomBytes(16<<20))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := f.verifier(jobs.WithBytesPerSecond(1 << 20)).Run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run error %v, want %v", err, context.Canceled)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("cancelled run took %v", elapsed)
	}
}
