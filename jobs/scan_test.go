package jobs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

// scanFixture is a real filesystem store, fake upstreams by connector
// name, and the configs scans run with.
type scanFixture struct {
	t   *testing.T
	st  *store.FS
	ups map[string]*upstreamtest.Upstream
}

// newScanFixture starts one fake upstream per connector name.
func newScanFixture(t *testing.T, connectors ...string) *scanFixture {
	t.Helper()
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &scanFixture{t: t, st: st, ups: map[string]*upstreamtest.Upstream{}}
	for _, name := range connectors {
		f.ups[name] = upstreamtest.New(t)
	}
	return f
}

// config parses "version: 1" plus yaml, where "URL(<connector>)" stands
// for that connector's fake upstream.
func (f *scanFixture) config(yaml string) *config.Config {
	f.t.Helper()
	for name, up := range f.ups {
		yaml = strings.ReplaceAll(yaml, "URL("+name+")", up.URL)
	}
	cfg, err := config.Parse([]byte("version: 1\n" + yaml))
	if err != nil {
		f.t.Fatal(err)
	}
	return cfg
}

// scan runs a Scanner whose connectors are real regclient upstreams
// (through the pull-through cache's Source).
func (f *scanFixture) scan(cfg *config.Config, opts ...ScanOption) *Report {
	f.t.Helper()
	c := NewTestCache(f.t, cfg, f.st)
	return f.run(NewScanner(cfg, f.st, c.Warming().Source, nil, opts...))
}

func (f *scanFixture) run(s *Scanner) *Report {
	f.t.Helper()
	rep, err := s.Run(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	checkScanSums(f.t, rep)
	return rep
}

// scanHubYAML is registry hub served by connector up.
const scanHubYAML = `
registries: [{name: hub, connectors: [up]}]
connectors: [{name: up, url: "URL(up)"}]`

// checkScanSums asserts that every reference is accounted for exactly once.
func checkScanSums(t *testing.T, rep *Report) {
	t.Helper()
	s := rep.Summary
	if got := s.Local + s.RemoteOnly + s.Problems + s.UpstreamErrors + s.Unchecked; got != s.References {
		t.Errorf("local %d + remote_only %d + problems %d + upstream_errors %d + unchecked %d = %d, want references %d",
			s.Local, s.RemoteOnly, s.Problems, s.UpstreamErrors, s.Unchecked, got, s.References)
	}
	sum := 0
	for _, n := range s.ByRegistry {
		sum += n
	}
	if sum != s.Problems {
		t.Errorf("by_registry sums to %d, want problems %d", sum, s.Problems)
	}
	if rep.Version != ReportVersion || rep.Job != JobDanglingScan {
		t.Errorf("version %d job %q", rep.Version, rep.Job)
	}
}

// scanObject is a generated manifest with the blobs it references directly.
type scanObject struct {
	mediaType string
	data      []byte
	digest    digest.Digest
	config    digest.Digest
	layers    []digest.Digest
	blobs     map[digest.Digest][]byte
	subject   *ocispec.Descriptor
}

func (o scanObject) descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: o.mediaType, Digest: o.digest, Size: int64(len(o.data))}
}

func (o *scanObject) blob(mediaType string, data []byte) ocispec.Descriptor {
	d := digest.FromBytes(data)
	o.blobs[d] = data
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// finish encodes v (json.Marshal cannot fail on these types) as o.
func (o *scanObject) finish(v any) scanObject {
	o.data, _ = json.Marshal(v)
	o.digest = digest.FromBytes(o.data)
	return *o
}

// newScanImage generates an OCI image: a config and n layers of unique
// content, then the layers of others (sharing their blobs) and extra
// descriptors as they are.
func newScanImage(n int, others []scanObject, extra ...ocispec.Descriptor) scanObject {
	o := scanObject{mediaType: ocispec.MediaTypeImageManifest, blobs: map[digest.Digest][]byte{}}
	cfg := o.blob(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","created":"`+rand.Text()+`"}`))
	o.config = cfg.Digest
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: o.mediaType, Config: cfg}
	for range n {
		m.Layers = append(m.Layers, o.blob(ocispec.MediaTypeImageLayerGzip, []byte("layer "+rand.Text())))
	}
	for _, other := range others {
		for _, d := range other.layers {
			m.Layers = append(m.Layers, o.blob(ocispec.MediaTypeImageLayerGzip, other.blobs[d]))
		}
	}
	for _, l := range m.Layers {
		o.layers = append(o.layers, l.Digest)
	}
	m.Layers = append(m.Layers, extra...)
	return o.finish(m)
}

// scanForeign is a non-distributable layer, stored nowhere.
func scanForeign() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
		Digest: digest.FromString("foreign " + rand.Text()), Size: 10}
}

// newScanIndex generates an OCI index over children.
func newScanIndex(children ...scanObject) scanObject {
	o := scanObject{mediaType: ocispec.MediaTypeImageIndex, blobs: map[digest.Digest][]byte{}}
	ix := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: o.mediaType}
	for _, c := range children {
		d := c.descriptor()
		d.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
		ix.Manifests = append(ix.Manifests, d)
	}
	return o.finish(ix)
}

// newScanReferrer generates an artifact (a signature, say) whose subject
// is subject.
func newScanReferrer(subject scanObject) scanObject {
	o := scanObject{mediaType: ocispec.MediaTypeImageManifest, blobs: map[digest.Digest][]byte{}}
	cfg := o.blob(ocispec.MediaTypeEmptyJSON, []byte("{}"))
	l := o.blob("application/vnd.example.signature", []byte("signature "+rand.Text()))
	o.config, o.layers = cfg.Digest, []digest.Digest{l.Digest}
	sd := subject.descriptor()
	o.subject = &sd
	return o.finish(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: o.mediaType,
		ArtifactType: "application/vnd.example.signature", Config: cfg, Layers: []ocispec.Descriptor{l}, Subject: &sd})
}

// seed stores o and its blobs in repo (recorded as coming from source, ""
// for a push, with tags) and, when up is not nil, in the upstream too.
func (f *scanFixture) seed(repo store.Repo, up *upstreamtest.Upstream, source string, o scanObject, tags ...string) {
	f.t.Helper()
	ctx := context.Background()
	for d, data := range o.blobs {
		if err := f.st.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			f.t.Fatal(err)
		}
		if up != nil {
			up.AddBlob(repo.Name, data)
		}
	}
	m := store.Manifest{MediaType: o.mediaType, Digest: o.digest, Data: o.data}
	if err := f.st.PutManifest(ctx, repo, m, store.PutManifestOptions{Source: source, Subject: o.subject}); err != nil {
		f.t.Fatal(err)
	}
	for _, tag := range tags {
		if err := f.st.SetTag(ctx, repo, tag, store.TagInfo{Digest: o.digest, Source: source}); err != nil {
			f.t.Fatal(err)
		}
	}
	if up != nil {
		up.AddManifest(repo.Name, "", o.mediaType, o.data)
	}
}

// unlink makes blob d invisible in repo; the content stays in the store.
func (f *scanFixture) unlink(repo store.Repo, d digest.Digest) {
	f.t.Helper()
	if err := f.st.UnlinkBlob(context.Background(), repo, d); err != nil {
		f.t.Fatal(err)
	}
}

// deleteManifest removes manifest d from repo (with its tags).
func (f *scanFixture) deleteManifest(repo store.Repo, d digest.Digest) {
	f.t.Helper()
	if err := f.st.DeleteManifest(context.Background(), repo, d); err != nil {
		f.t.Fatal(err)
	}
}

func scanRepoOf(registry, name string) store.Repo { return store.Repo{Registry: registry, Name: name} }

// scanRepairs records the images a scan asks to repair; queueing refuse
// fails.
type scanRepairs struct {
	mu     sync.Mutex
	images []string
	refuse string
}

func (r *scanRepairs) queue(_ context.Context, image string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.images = append(r.images, image)
	if image == r.refuse {
		return errors.New("queue full")
	}
	return nil
}

func (r *scanRepairs) check(t *testing.T, want ...string) {
	t.Helper()
	slices.Sort(r.images)
	if slices.Sort(want); !slices.Equal(r.images, want) {
		t.Errorf("repairs %q\nwant    %q", r.images, want)
	}
}

// checkScanProblems compares whole problem lists. An upstream error must say
// what went wrong in Detail, whose wording belongs to the connector.
func checkScanProblems(t *testing.T, got, want []Problem) {
	t.Helper()
	got = slices.Clone(got)
	for i := range got {
		if got[i].Reason == ReasonUpstreamError {
			if got[i].Detail == "" {
				t.Errorf("problem %d: upstream error without detail", i)
			}
			got[i].Detail = ""
		}
	}
	if !reflect.DeepEqual(got, want) {
		dump := func(ps []Problem) (s string) {
			for _, p := range ps {
				s += fmt.Sprintf("  %+v\n", p)
			}
			return s
		}
		t.Errorf("problems:\n%swant:\n%s", dump(got), dump(want))
	}
}

// TestScanFindsEachKindOfDamage builds a store with one case of every kind
// of damage and checks that the report names each exactly, and nothing
// else.
func TestScanFindsEachKindOfDamage(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up", "flaky")
	cfg := f.config(`
registries: [{name: hub, connectors: [up]}, {name: flaky, connectors: [flaky]}, {name: local, push: true}, {name: empty, push: true}]
connectors: [{name: up, url: "URL(up)"}, {name: flaky, url: "URL(flaky)"}]`)
	up, flaky := f.ups["up"], f.ups["flaky"]

	// Missing locally, still upstream: remote-only, not a problem.
	remote := newScanImage(2, nil)
	f.seed(scanRepoOf("hub", "remote"), up, "up", remote, "v1")
	f.unlink(scanRepoOf("hub", "remote"), remote.layers[0])

	// Pushed into a registry with connectors, the layer is upstream.
	pushedRemote := newScanImage(2, nil)
	f.seed(scanRepoOf("hub", "pushed-remote"), up, "", pushedRemote, "v1")
	f.unlink(scanRepoOf("hub", "pushed-remote"), pushedRemote.config)

	// Gone here and upstream (and another layer only upstream).
	gone := newScanImage(2, nil)
	f.seed(scanRepoOf("hub", "gone"), up, "up", gone, "b", "a")
	f.unlink(scanRepoOf("hub", "gone"), gone.layers[0])
	up.Delete(gone.layers[0])
	f.unlink(scanRepoOf("hub", "gone"), gone.layers[1])

	// An index whose child manifest is gone in both places.
	child1, child2 := newScanImage(2, nil), newScanImage(2, nil)
	index := newScanIndex(child1, child2)
	f.seed(scanRepoOf("hub", "index"), up, "up", child1)
	f.seed(scanRepoOf("hub", "index"), up, "up", child2)
	f.seed(scanRepoOf("hub", "index"), up, "up", index, "multi")
	f.deleteManifest(scanRepoOf("hub", "index"), child1.digest)
	up.Delete(child1.digest)

	// A referrer whose subject is gone in both places.
	subject := newScanImage(1, nil)
	sig := newScanReferrer(subject)
	f.seed(scanRepoOf("hub", "referrer"), up, "up", subject, "v1")
	f.seed(scanRepoOf("hub", "referrer"), up, "up", sig)
	f.deleteManifest(scanRepoOf("hub", "referrer"), subject.digest)
	up.Delete(subject.digest)

	// Provided by a connector that is no longer configured.
	retired := newScanImage(2, nil)
	f.seed(scanRepoOf("hub", "retired"), nil, "retired", retired, "v1")
	f.unlink(scanRepoOf("hub", "retired"), retired.layers[1])

	// A non-distributable layer is stored nowhere and that is fine.
	foreign := newScanImage(1, nil, scanForeign())
	f.seed(scanRepoOf("hub", "foreign"), up, "up", foreign, "v1")

	// The upstream cannot answer: an upstream error, not dangling.
	down := newScanImage(2, nil)
	f.seed(scanRepoOf("flaky", "app"), flaky, "flaky", down, "v1")
	f.unlink(scanRepoOf("flaky", "app"), down.layers[0])
	flaky.SetDown(true)

	// Pushed into a registry without connectors, a layer is gone.
	pushed := newScanImage(2, nil)
	f.seed(scanRepoOf("local", "app"), nil, "", pushed, "latest")
	f.unlink(scanRepoOf("local", "app"), pushed.layers[1])

	var repairs scanRepairs
	rep := f.scan(cfg, WithRepair(repairs.queue))

	layer, manifestType := ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageManifest
	checkScanProblems(t, rep.Problems, []Problem{
		{Registry: "flaky", Repository: "app", Manifest: down.digest.String(), Tags: []string{"v1"},
			Missing: down.layers[0].String(), MediaType: layer, Connector: "flaky", Reason: ReasonUpstreamError},
		{Registry: "hub", Repository: "gone", Manifest: gone.digest.String(), Tags: []string{"a", "b"},
			Missing: gone.layers[0].String(), MediaType: layer, Connector: "up", Reason: ReasonMissing},
		{Registry: "hub", Repository: "index", Manifest: index.digest.String(), Tags: []string{"multi"},
			Missing: child1.digest.String(), MediaType: manifestType, Connector: "up", Reason: ReasonMissing},
		{Registry: "hub", Repository: "referrer", Manifest: sig.digest.String(),
			Missing: subject.digest.String(), MediaType: manifestType, Connector: "up", Reason: ReasonMissing},
		{Registry: "hub", Repository: "retired", Manifest: retired.digest.String(), Tags: []string{"v1"},
			Missing: retired.layers[1].String(), MediaType: layer, Connector: "retired", Reason: ReasonConnectorRemoved},
		{Registry: "local", Repository: "app", Manifest: pushed.digest.String(), Tags: []string{"latest"},
			Missing: pushed.layers[1].String(), MediaType: layer, Reason: ReasonMissing},
	})
	want := Summary{
		Registries: 4,
		// remote, pushed-remote, gone, index (+1 child), referrer, retired, foreign, flaky, local
		Manifests:      1 + 1 + 1 + 2 + 1 + 1 + 1 + 1 + 1,
		References:     3 + 3 + 3 + (2 + 3) + 3 + 3 + 2 + 3 + 3,
		Local:          2 + 2 + 1 + (1 + 3) + 2 + 2 + 2 + 2 + 2,
		RemoteOnly:     3,
		Problems:       5,
		UpstreamErrors: 1,
		ByRegistry:     map[string]int{"hub": 4, "flaky": 0, "local": 1, "empty": 0},
		RepairsQueued:  2,
	}
	if !reflect.DeepEqual(rep.Summary, want) {
		t.Errorf("summary %+v\nwant    %+v", rep.Summary, want)
	}
	repairs.check(t, "hub/pushed-remote@"+pushedRemote.digest.String(), "hub/remote@"+remote.digest.String())
	if rep.Clean() {
		t.Error("Clean() is true for a damaged store")
	}
}

// TestScanConnectorRemoved scans one store with the config it was filled
// under, then with a config where the providing connector is gone.
func TestScanConnectorRemoved(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, after string
	}{
		{"connector deleted", scanHubYAML},
		{"connector dropped from the registry", `
registries: [{name: hub, connectors: [up]}, {name: other, connectors: [old]}]
connectors: [{name: up, url: "URL(up)"}, {name: old, url: "URL(old)"}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newScanFixture(t, "up", "old")
			before := f.config(`
registries: [{name: hub, connectors: [up, old]}]
connectors: [{name: up, url: "URL(up)"}, {name: old, url: "URL(old)"}]`)
			img := newScanImage(2, nil)
			repo := scanRepoOf("hub", "app")
			f.seed(repo, f.ups["old"], "old", img, "v1")
			f.unlink(repo, img.layers[0])

			rep := f.scan(before)
			if !rep.Clean() || rep.Summary.RemoteOnly != 1 || len(rep.Problems) != 0 {
				t.Fatalf("before: %+v %+v", rep.Summary, rep.Problems)
			}
			rep = f.scan(f.config(tt.after))
			checkScanProblems(t, rep.Problems, []Problem{{Registry: "hub", Repository: "app", Manifest: img.digest.String(),
				Tags: []string{"v1"}, Missing: img.layers[0].String(), MediaType: ocispec.MediaTypeImageLayerGzip,
				Connector: "old", Reason: ReasonConnectorRemoved}})
			if rep.Summary.Problems != 1 || rep.Summary.ByRegistry["hub"] != 1 || rep.Summary.RemoteOnly != 0 {
				t.Errorf("after: %+v", rep.Summary)
			}
		})
	}
}

// TestScanRepairQueuesFixableManifests: repair is queued once per manifest
// whose missing references are all still upstream (an upstream error does
// not prevent it), never for a dangling one, and a failed queueing is not
// counted.
func TestScanRepairQueuesFixableManifests(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up")
	cfg := f.config(scanHubYAML)
	up := f.ups["up"]
	repo := scanRepoOf("hub", "app")
	clean, fixable, twice, dangling, unsure, refused := newScanImage(2, nil), newScanImage(2, nil),
		newScanImage(2, nil), newScanImage(2, nil), newScanImage(2, nil), newScanImage(2, nil)
	for _, o := range []scanObject{clean, fixable, twice, dangling, unsure, refused} {
		f.seed(repo, up, "up", o)
	}
	f.unlink(repo, fixable.layers[0])
	f.unlink(repo, twice.layers[0])
	f.unlink(repo, twice.config)
	f.unlink(repo, dangling.layers[0])
	f.unlink(repo, dangling.layers[1])
	up.Delete(dangling.layers[1])
	f.unlink(repo, unsure.layers[0])
	f.unlink(repo, unsure.layers[1])
	up.SetFault(unsure.layers[1].String(), upstreamtest.Fault{Status: http.StatusInternalServerError})
	f.unlink(repo, refused.layers[0])

	// An index whose child is missing locally but upstream is fixable.
	child := newScanImage(1, nil)
	index := newScanIndex(child)
	f.seed(scanRepoOf("hub", "multi"), up, "up", child)
	f.seed(scanRepoOf("hub", "multi"), up, "up", index)
	f.deleteManifest(scanRepoOf("hub", "multi"), child.digest)

	repairs := scanRepairs{refuse: "hub/app@" + refused.digest.String()}
	rep := f.scan(cfg, WithRepair(repairs.queue))
	repairs.check(t, "hub/app@"+fixable.digest.String(), "hub/app@"+twice.digest.String(),
		"hub/app@"+unsure.digest.String(), "hub/app@"+refused.digest.String(), "hub/multi@"+index.digest.String())
	if rep.Summary.RepairsQueued != 4 {
		t.Errorf("repairs_queued %d, want 4 (one refused)", rep.Summary.RepairsQueued)
	}
	if rep.Summary.RemoteOnly != 7 || rep.Summary.Problems != 1 || rep.Summary.UpstreamErrors != 1 {
		t.Errorf("summary %+v", rep.Summary)
	}
}

func TestScanCleanStore(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up")
	cfg := f.config(`
registries: [{name: hub, connectors: [up]}, {name: local, push: true}]
connectors: [{name: up, url: "URL(up)"}]`)
	child := newScanImage(3, nil, scanForeign())
	f.seed(scanRepoOf("hub", "app"), f.ups["up"], "up", child, "v1")
	f.seed(scanRepoOf("hub", "app"), f.ups["up"], "up", newScanIndex(child), "multi")
	f.seed(scanRepoOf("hub", "app"), f.ups["up"], "up", newScanReferrer(child))
	f.seed(scanRepoOf("local", "app"), nil, "", newScanImage(1, nil), "latest")
	// Content of a registry that is no longer configured is not scanned.
	stale := newScanImage(1, nil)
	f.seed(scanRepoOf("gone", "app"), nil, "", stale)
	f.unlink(scanRepoOf("gone", "app"), stale.layers[0])

	start := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	rep := f.scan(cfg, WithScanClock(func() time.Time { return start }))
	want := Summary{Registries: 2, Manifests: 4, References: 4 + 1 + 3 + 2, Local: 4 + 1 + 3 + 2,
		ByRegistry: map[string]int{"hub": 0, "local": 0}}
	if !reflect.DeepEqual(rep.Summary, want) {
		t.Errorf("summary %+v\nwant    %+v", rep.Summary, want)
	}
	if !rep.Clean() || len(rep.Problems) != 0 || rep.Problems == nil {
		t.Errorf("clean %v, problems %#v", rep.Clean(), rep.Problems)
	}
	if !rep.Started.Equal(start) || !rep.Finished.Equal(start) {
		t.Errorf("started %v finished %v, want %v", rep.Started, rep.Finished, start)
	}
	if n := f.ups["up"].Total(); n != 0 {
		t.Errorf("%d upstream requests for a store that is all local", n)
	}
}

// TestScanAsksUpstreamOnce: a layer shared by three manifests of a
// repository is asked about once, whether it is upstream or gone.
func TestScanAsksUpstreamOnce(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up")
	cfg := f.config(scanHubYAML)
	up := f.ups["up"]
	repo := scanRepoOf("hub", "app")
	// Three manifests share two layers: the first is upstream, the second
	// gone. A pushed manifest asks the registry's connectors: the same one.
	shared := newScanImage(2, nil) // not stored itself
	for _, source := range []string{"up", "up", ""} {
		f.seed(repo, up, source, newScanImage(1, []scanObject{shared}))
	}
	for _, d := range shared.layers {
		f.unlink(repo, d)
	}
	up.Delete(shared.layers[1])
	rep := f.scan(cfg, WithScanConcurrency(3))
	for _, d := range shared.layers {
		if n := up.Count(http.MethodHead, "/blobs/"+d.String()); n != 1 {
			t.Errorf("HEAD %s: %d requests, want 1", d, n)
		}
	}
	if rep.Summary.RemoteOnly != 3 || rep.Summary.Problems != 3 || len(rep.Problems) != 3 {
		t.Errorf("summary %+v, %d problems", rep.Summary, len(rep.Problems))
	}
	for _, p := range rep.Problems {
		if p.Missing != shared.layers[1].String() || p.Reason != ReasonMissing || p.Connector != "up" {
			t.Errorf("problem %+v", p)
		}
	}
}

// TestScanUpstreamRateLimitedForReal: a 429 with Retry-After from a real
// connector is waited out and asked again once, then reported.
func TestScanUpstreamRateLimitedForReal(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up")
	cfg := f.config(scanHubYAML)
	up := f.ups["up"]
	repo := scanRepoOf("hub", "app")
	img := newScanImage(1, nil)
	f.seed(repo, up, "up", img, "v1")
	f.unlink(repo, img.layers[0])
	up.SetFault(img.layers[0].String(), upstreamtest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "1"})
	start := time.Now()
	rep := f.scan(cfg)
	if len(rep.Problems) != 1 || rep.Problems[0].Reason != ReasonUpstreamError || rep.Summary.UpstreamErrors != 1 || !rep.Clean() {
		t.Errorf("summary %+v problems %+v", rep.Summary, rep.Problems)
	}
	if n := up.Count(http.MethodHead, "/blobs/"+img.layers[0].String()); n != 2 {
		t.Errorf("%d HEAD requests, want 2 (ask, wait, ask again)", n)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("took %v: Retry-After not waited out", took)
	}
}

// scanFakeSource is a connector whose HEAD answers come from a function.
type scanFakeSource struct {
	connector.Source // nil: the scan uses no other method
	name             string
	head             func(ctx context.Context, d digest.Digest) error
	calls            atomic.Int64
}

func newScanFake(name string, head func(ctx context.Context, d digest.Digest) error) *scanFakeSource {
	return &scanFakeSource{name: name, head: head}
}

func (s *scanFakeSource) Name() string { return s.name }

func (s *scanFakeSource) HeadBlob(ctx context.Context, _ string, d digest.Digest) (int64, error) {
	s.calls.Add(1)
	return 1, s.head(ctx, d)
}

func (s *scanFakeSource) HeadManifest(ctx context.Context, _, reference string) (ocispec.Descriptor, error) {
	s.calls.Add(1)
	return ocispec.Descriptor{}, s.head(ctx, digest.Digest(reference))
}

// fakeScanner scans f's store with registry hub served by srcs, in order.
func (f *scanFixture) fakeScanner(srcs []*scanFakeSource, opts ...ScanOption) *Scanner {
	var names []string
	conns := "connectors:\n"
	for _, s := range srcs {
		names = append(names, s.name)
		conns += fmt.Sprintf("  - {name: %s, url: \"http://127.0.0.1:1\"}\n", s.name)
	}
	cfg := f.config("registries:\n  - {name: hub, connectors: [" + strings.Join(names, ", ") + "]}\n" + conns)
	return NewScanner(cfg, f.st, func(name string) (connector.Source, bool) {
		i := slices.Index(names, name)
		return srcs[max(i, 0)], i >= 0
	}, nil, opts...)
}

// seedMissing stores n images in n repositories of hub, from source,
// each with one layer missing locally.
func (f *scanFixture) seedMissing(n int, source string) {
	for i := range n {
		img := newScanImage(1, nil)
		repo := scanRepoOf("hub", fmt.Sprintf("app%02d", i))
		f.seed(repo, nil, source, img)
		f.unlink(repo, img.layers[0])
	}
}

var (
	errScanNotFound = &connector.Error{Connector: "x", Status: http.StatusNotFound, Err: connector.ErrNotFound}
	errScan500      = &connector.Error{Connector: "x", Status: http.StatusInternalServerError, Temporary: true}
)

func TestScanRetryAfter(t *testing.T) {
	t.Parallel()
	limited := func(ra time.Duration) error {
		return &connector.Error{Connector: "up", Kind: connector.KindBlob, Status: http.StatusTooManyRequests,
			RetryAfter: ra, Temporary: true, Err: connector.ErrRateLimit}
	}
	tests := []struct {
		name                    string
		answers                 []error // by call; the last one repeats
		calls                   int64
		remoteOnly, upstreamErr int
	}{
		{"retry succeeds", []error{limited(20 * time.Millisecond), nil}, 2, 1, 0},
		{"limited again", []error{limited(20 * time.Millisecond)}, 2, 0, 1},
		{"retry-after too long", []error{limited(time.Hour)}, 1, 0, 1},
		{"server error is not retried", []error{errScan500}, 1, 0, 1},
		{"not found", []error{errScanNotFound}, 1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newScanFixture(t)
			f.seedMissing(1, "up")
			var src *scanFakeSource
			src = newScanFake("up", func(context.Context, digest.Digest) error {
				return tt.answers[min(int(src.calls.Load())-1, len(tt.answers)-1)]
			})
			s := f.fakeScanner([]*scanFakeSource{src})
			s.maxRetryWait = time.Second
			rep := f.run(s)
			if got := src.calls.Load(); got != tt.calls {
				t.Errorf("%d calls, want %d", got, tt.calls)
			}
			if rep.Summary.RemoteOnly != tt.remoteOnly || rep.Summary.UpstreamErrors != tt.upstreamErr {
				t.Errorf("summary %+v", rep.Summary)
			}
		})
	}
}

// TestScanConnectorOrder: a pushed manifest's missing reference is asked of
// the registry's connectors in order until one has it; one from a
// connector is asked of that connector only.
func TestScanConnectorOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		source       string
		a, b         error // nil: has it
		reason, conn string
		callsA       int64
		callsB       int64
	}{
		{"first has it", "", nil, errScanNotFound, "", "", 1, 0},
		{"second has it", "", errScanNotFound, nil, "", "", 1, 1},
		{"second has it, first failed", "", errScan500, nil, "", "", 1, 1},
		{"neither has it", "", errScanNotFound, errScanNotFound, ReasonMissing, "a,b", 1, 1},
		{"first failed, second lacks it", "", errScan500, errScanNotFound, ReasonUpstreamError, "a", 1, 1},
		{"provided by the second", "b", nil, errScanNotFound, ReasonMissing, "b", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newScanFixture(t)
			f.seedMissing(1, tt.source)
			a := newScanFake("a", func(context.Context, digest.Digest) error { return tt.a })
			b := newScanFake("b", func(context.Context, digest.Digest) error { return tt.b })
			rep := f.run(f.fakeScanner([]*scanFakeSource{a, b}))
			var reason, conn string
			if len(rep.Problems) == 1 {
				reason, conn = rep.Problems[0].Reason, rep.Problems[0].Connector
			}
			if reason != tt.reason || conn != tt.conn || len(rep.Problems) > 1 || (reason == "") != (rep.Summary.RemoteOnly == 1) {
				t.Errorf("problems %+v, summary %+v; want %q via %q", rep.Problems, rep.Summary, tt.reason, tt.conn)
			}
			if a.calls.Load() != tt.callsA || b.calls.Load() != tt.callsB {
				t.Errorf("asked a %d and b %d times, want %d and %d", a.calls.Load(), b.calls.Load(), tt.callsA, tt.callsB)
			}
		})
	}
}

// TestScanConcurrencyBound: upstream HEADs overlap, but never more than
// the configured number at once.
func TestScanConcurrencyBound(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t)
	f.seedMissing(12, "up")
	var (
		mu             sync.Mutex
		inFlight, peak int
	)
	src := newScanFake("up", func(context.Context, digest.Digest) error {
		mu.Lock()
		inFlight++
		peak = max(peak, inFlight)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		inFlight--
		mu.Unlock()
		return nil
	})
	if rep := f.run(f.fakeScanner([]*scanFakeSource{src}, WithScanConcurrency(3))); rep.Summary.RemoteOnly != 12 {
		t.Errorf("summary %+v", rep.Summary)
	}
	if p := peak; p > 3 || p < 2 {
		t.Errorf("peak of %d HEADs in flight, want 2..3", p)
	}
}

func TestScanCancelled(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t)
	f.seedMissing(20, "up")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	never := newScanFake("up", func(context.Context, digest.Digest) error { return nil })
	if _, err := f.fakeScanner([]*scanFakeSource{never}).Run(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled before: %v", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	hang := newScanFake("up", func(ctx context.Context, _ digest.Digest) error {
		cancel()
		<-ctx.Done()
		return &connector.Error{Connector: "up", Temporary: true, Err: ctx.Err()}
	})
	done := make(chan error, 1)
	go func() {
		_, err := f.fakeScanner([]*scanFakeSource{hang}).Run(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled during: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}
	if n := hang.calls.Load(); n > DefaultScanConcurrency {
		t.Errorf("%d HEADs after cancellation", n)
	}
}

func TestScanOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opt  ScanOption
		ok   bool
	}{
		{"concurrency 1", WithScanConcurrency(1), true},
		{"concurrency 0", WithScanConcurrency(0), false},
		{"nil clock", WithScanClock(nil), false},
		{"nil repair disables repair", WithRepair(nil), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newScanFixture(t)
			src := newScanFake("up", func(context.Context, digest.Digest) error { return nil })
			if _, err := f.fakeScanner([]*scanFakeSource{src}, tt.opt).Run(context.Background()); (err == nil) != tt.ok {
				t.Errorf("Run: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
