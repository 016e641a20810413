package jobs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// runGC runs gc over f's store as if two hours had passed since the
// fixture was stored (delay 1h unless cfg says otherwise).
func (f *scanFixture) runGC(cfg *config.Config, opts ...GCOption) *Report {
	f.t.Helper()
	later := time.Now().Add(2 * time.Hour)
	opts = append([]GCOption{WithGCClock(func() time.Time { return later }), WithGCDelay(time.Hour)}, opts...)
	g, err := NewGC(cfg, f.st, nil, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	rep, err := g.Run(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return rep
}

// removedList is a report's removals as sorted "reason kind what" lines.
func removedList(rep *Report) []string {
	var out []string
	for _, e := range rep.Removed {
		what := e.Blob
		if e.Kind() != "blob" {
			what = e.Registry + "/" + e.Repository + ":" + e.Tag + "@" + e.Manifest
		}
		out = append(out, fmt.Sprintf("%s %s %s %d", e.Reason, e.Kind(), what, e.Bytes))
	}
	sort.Strings(out)
	return out
}

// hasContent reports whether d is stored.
func (f *scanFixture) hasContent(d digest.Digest) bool {
	_, err := f.st.HasBlob(context.Background(), d)
	return err == nil
}

// TestGCMarkAndSweep: what a tag, an index, a referrer or a pull reaches
// stays; an untagged manifest never pulled, the layers only it or a
// deleted manifest referenced, and a blob nothing references go. A dry
// run lists the same and removes nothing.
func TestGCMarkAndSweep(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up")
	ctx := context.Background()
	app, other := scanRepoOf("hub", "team/app"), scanRepoOf("hub", "team/other")
	amd := newScanImage(2, nil)
	arm := newScanImage(1, []scanObject{amd})
	ix := newScanIndex(amd, arm)
	sig := newScanReferrer(ix)
	f.seed(app, nil, "up", amd)
	f.seed(app, nil, "up", arm)
	f.seed(app, nil, "up", ix, "v1")
	f.seed(app, nil, "up", sig)
	byDigest := newScanImage(1, nil)
	f.seed(app, nil, "up", byDigest)
	if err := f.st.RecordPulls(ctx, app, map[digest.Digest]time.Time{byDigest.digest: time.Now()}); err != nil {
		t.Fatal(err)
	}
	loose := newScanImage(1, nil)
	f.seed(app, nil, "up", loose)
	deleted := newScanImage(1, []scanObject{amd}) // shares amd's layers
	f.seed(other, nil, "", deleted, "gone")
	f.deleteManifest(other, deleted.digest)
	orphan := []byte("uploaded, never referenced")
	od := digest.FromBytes(orphan)
	if err := f.st.PutBlob(ctx, other, od, int64(len(orphan)), bytes.NewReader(orphan)); err != nil {
		t.Fatal(err)
	}
	cfg := f.config(scanHubYAML)

	var want []string
	want = append(want, fmt.Sprintf("untagged manifest hub/team/app:@%s %d", loose.digest, len(loose.data)))
	for d, b := range loose.blobs {
		want = append(want, fmt.Sprintf("unreferenced blob %s %d", d, len(b)))
	}
	// The deleted manifest's content (listed as a blob: its link went
	// with the DELETE), its config and own layer; amd's layers stay.
	want = append(want, fmt.Sprintf("unreferenced blob %s %d", deleted.digest, len(deleted.data)),
		fmt.Sprintf("unreferenced blob %s %d", deleted.config, len(deleted.blobs[deleted.config])))
	for _, l := range deleted.layers {
		if _, shared := amd.blobs[l]; !shared {
			want = append(want, fmt.Sprintf("unreferenced blob %s %d", l, len(deleted.blobs[l])))
		}
	}
	want = append(want, fmt.Sprintf("unreferenced blob %s %d", od, len(orphan)))
	sort.Strings(want)
	keptObjs := []scanObject{amd, arm, ix, sig, byDigest}
	beforeApp := objSize(append(slices.Clone(keptObjs), loose)...)

	dry := f.runGC(cfg, WithGCDryRun(true))
	if got := removedList(dry); !slices.Equal(got, want) {
		t.Fatalf("dry run removals\n got %q\nwant %q", got, want)
	}
	if !dry.DryRun || !f.hasContent(loose.digest) || !f.hasContent(od) {
		t.Fatal("the dry run removed something")
	}
	rep := f.runGC(cfg)
	if got := removedList(rep); !slices.Equal(got, want) {
		t.Fatalf("removals\n got %q\nwant %q", got, want)
	}
	s := rep.GC
	if s.ManifestsRemoved != 1 || s.TagsRemoved != 0 || s.BlobsRemoved != len(want)-1 || s.BytesFreed != dry.GC.BytesFreed || s.InUse != 0 {
		t.Errorf("summary %+v (dry run freed %d)", s, dry.GC.BytesFreed)
	}
	if rb := s.ByRegistry["hub"]; rb.BytesAfter != objSize(keptObjs...) || rb.BytesBefore != beforeApp || rb != dry.GC.ByRegistry["hub"] {
		t.Errorf("hub bytes %+v (dry %+v), want before %d after %d", rb, dry.GC.ByRegistry["hub"], beforeApp, objSize(keptObjs...))
	}
	for _, o := range keptObjs {
		if _, err := f.st.Manifest(ctx, app, o.digest); err != nil {
			t.Errorf("kept manifest %s: %v", o.digest, err)
		}
		for d := range o.blobs {
			if _, err := f.st.StatBlob(ctx, app, d); err != nil {
				t.Errorf("blob %s of kept manifest %s: %v", d, o.digest, err)
			}
		}
	}
	if _, err := f.st.Manifest(ctx, app, loose.digest); err == nil || f.hasContent(od) {
		t.Error("garbage still stored")
	}
	// A second run finds nothing.
	if again := f.runGC(cfg); len(again.Removed) != 0 || again.GC.LinksRemoved != 0 {
		t.Errorf("second run removed %q", removedList(again))
	}
	// The scan agrees nothing kept is dangling.
	if sc := f.scan(cfg); sc.Summary.Problems != 0 {
		t.Errorf("scan after gc: %+v", sc.Problems)
	}
}

// TestGCDelay: nothing written within the delay goes.
func TestGCDelay(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up")
	loose := newScanImage(1, nil)
	f.seed(scanRepoOf("hub", "team/app"), nil, "up", loose)
	g, err := NewGC(f.config(scanHubYAML), f.st, nil, WithGCDelay(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := g.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Removed) != 0 || !f.hasContent(loose.digest) {
		t.Errorf("removed within the delay: %q", removedList(rep))
	}
}

// TestGCRetention: over budget, the least recently pulled images go first
// as over-budget, with their content; kept and pushed images stay.
func TestGCRetention(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t)
	ctx := context.Background()
	now := time.Now()
	seed := func(name, tag, source string, hoursAgo int, o scanObject) store.Repo {
		repo := scanRepoOf("hub", name)
		f.seed(repo, nil, source, o, tag)
		if err := f.st.RecordPulls(ctx, repo, map[digest.Digest]time.Time{o.digest: now.Add(-time.Duration(hoursAgo) * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		return repo
	}
	old, mid, recent := newScanImage(2, nil), newScanImage(2, nil), newScanImage(2, nil)
	kept, mine := newScanImage(2, nil), newScanImage(2, nil)
	seed("team/old", "v1", "up", 48, old)
	seed("team/mid", "v1", "up", 10, mid)
	seed("team/recent", "v1", "up", 0, recent)
	seed("team/kept", "latest", "up", 100, kept)
	seed("team/mine", "v1", "", 200, mine)
	budget := objSize(recent, kept, mine) + 1
	cfg := f.config(fmt.Sprintf(`
registries:
  - name: hub
    push: true
    connectors: [up]
    retention: {max_bytes: %d, keep: ["team/kept:*"]}
connectors: [{name: up, url: "http://127.0.0.1:1"}]
`, budget))
	rep := f.runGC(cfg)
	s := rep.GC
	if s.TagsRemoved != 2 || s.ManifestsRemoved != 2 {
		t.Fatalf("summary %+v, removed %q", s, removedList(rep))
	}
	for _, e := range rep.Removed {
		if e.Reason != ReasonOverBudget {
			t.Errorf("removal %+v: reason %s, want over-budget", e, e.Reason)
		}
	}
	if rb := s.ByRegistry["hub"]; rb.BytesAfter != budget-1 || rb.BytesBefore != objSize(old, mid, recent, kept, mine) {
		t.Errorf("hub bytes %+v, want after %d", rb, budget-1)
	}
	for _, o := range []scanObject{old, mid} {
		if f.hasContent(o.digest) || f.hasContent(o.config) {
			t.Errorf("content of over-budget image %s still stored", o.digest)
		}
	}
	for _, name := range []string{"team/recent", "team/kept", "team/mine"} {
		if _, err := f.st.Tag(ctx, scanRepoOf("hub", name), "v1"); err != nil && name != "team/kept" {
			t.Errorf("%s:v1: %v", name, err)
		}
	}
	if _, err := f.st.Tag(ctx, scanRepoOf("hub", "team/kept"), "latest"); err != nil {
		t.Errorf("kept tag: %v", err)
	}
	if inv, err := Inventory(ctx, f.st, "hub"); err != nil || inv.Bytes != budget-1 {
		t.Errorf("inventory after gc: %v bytes, %v; want %d", inv.Bytes, err, budget-1)
	}
}

// TestGCRecoversInterruptedRemovals: a removal a crash interrupted is
// undone before the run, which then decides again.
func TestGCRecoversInterruptedRemovals(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t, "up")
	root := t.TempDir()
	st, err := store.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	f.st = st
	repo := scanRepoOf("hub", "team/app")
	img := newScanImage(1, nil)
	f.seed(repo, nil, "up", img, "v1")
	// A crash half-way through removing a layer: renamed into trash/
	// (docs of store.FS), neither deleted nor put back.
	l := img.layers[0]
	rel := filepath.Join("blobs", "sha256", l.Encoded()[:2], l.Encoded())
	dir := filepath.Join(root, "trash", "1-crashed", "1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "path"), []byte(filepath.ToSlash(rel)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, rel), filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
	if f.hasContent(img.layers[0]) {
		t.Fatal("layer visible while in trash/")
	}
	rep := f.runGC(f.config(scanHubYAML))
	if rep.GC.Recovered != 1 || len(rep.Removed) != 0 {
		t.Errorf("recovered %d, removed %q; want 1, none", rep.GC.Recovered, removedList(rep))
	}
	if _, err := f.st.StatBlob(context.Background(), repo, img.layers[0]); err != nil {
		t.Errorf("layer after recovery: %v", err)
	}
}

// TestGCFree: the disk watermark's extra eviction takes retention-managed
// images least recently used first, across registries, until enough is
// freed; kept images and registries without retention stay.
func TestGCFree(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t)
	ctx := context.Background()
	now := time.Now()
	seed := func(reg, name string, hoursAgo int, o scanObject) {
		repo := scanRepoOf(reg, name)
		f.seed(repo, nil, "up", o, "v1")
		if err := f.st.RecordPulls(ctx, repo, map[digest.Digest]time.Time{o.digest: now.Add(-time.Duration(hoursAgo) * time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	old, mid, recent, kept, other := newScanImage(1, nil), newScanImage(1, nil), newScanImage(1, nil), newScanImage(1, nil), newScanImage(1, nil)
	seed("hub", "team/old", 48, old)
	seed("mirror", "team/mid", 10, mid)
	seed("hub", "team/recent", 0, recent)
	seed("hub", "team/kept", 100, kept)
	seed("plain", "team/other", 200, other)
	cfg := f.config(`
registries:
  - {name: hub, connectors: [up], retention: {keep: ["team/kept:*"]}}
  - {name: mirror, connectors: [up], retention: {}}
  - {name: plain, connectors: [up]}
connectors: [{name: up, url: "http://127.0.0.1:1"}]
`)
	rep := f.runGC(cfg, WithGCFree(objSize(old)+1))
	var tags []string
	for _, e := range rep.Removed {
		if e.Kind() == "tag" {
			tags = append(tags, e.Registry+"/"+e.Repository+" "+e.Reason)
		}
	}
	if want := []string{"hub/team/old over-budget", "mirror/team/mid over-budget"}; !slices.Equal(tags, want) {
		t.Errorf("tags removed %q, want %q", tags, want)
	}
	for _, o := range []scanObject{recent, kept, other} {
		if !f.hasContent(o.digest) {
			t.Errorf("%s removed", o.digest)
		}
	}
	// Without a watermark nothing is over any budget: nothing goes.
	if again := f.runGC(cfg); again.GC.TagsRemoved != 0 {
		t.Errorf("run without watermark removed %q", removedList(again))
	}
}

// TestGCUnreadableManifest: a corrupt manifest that stays (tagged) stops
// the run from removing anything, since what it references is unknown; a
// corrupt one that goes (untagged) does not.
func TestGCUnreadableManifest(t *testing.T) {
	t.Parallel()
	for _, tagged := range []bool{true, false} {
		f := newScanFixture(t, "up")
		root := t.TempDir()
		st, err := store.NewFS(root)
		if err != nil {
			t.Fatal(err)
		}
		f.st = st
		repo := scanRepoOf("hub", "team/app")
		bad, loose := newScanImage(1, nil), newScanImage(1, nil)
		if tagged {
			f.seed(repo, nil, "up", bad, "v1")
		} else {
			f.seed(repo, nil, "up", bad)
		}
		f.seed(repo, nil, "up", loose)
		hx := bad.digest.Encoded()
		if err := os.WriteFile(filepath.Join(root, "blobs", "sha256", hx[:2], hx), []byte(`{"corrupt": true}`), 0o600); err != nil {
			t.Fatal(err)
		}
		rep := f.runGC(f.config(scanHubYAML))
		if tagged {
			if len(rep.Removed) != 0 || !rep.GC.BlobSweepSkipped || !f.hasContent(loose.digest) || !f.hasContent(bad.layers[0]) {
				t.Errorf("tagged corrupt manifest: removed %q, skipped %v", removedList(rep), rep.GC.BlobSweepSkipped)
			}
		} else if rep.GC.ManifestsRemoved != 2 || rep.GC.BlobSweepSkipped || f.hasContent(loose.layers[0]) {
			t.Errorf("untagged corrupt manifest: removed %q, skipped %v", removedList(rep), rep.GC.BlobSweepSkipped)
		}
	}
}

// TestGCUnpulledByDigest: a manifest pulled by digest is an image of its
// own: it stays while pulled within unpulled_for and goes, as unpulled,
// once not; without retention it stays.
func TestGCUnpulledByDigest(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t)
	ctx := context.Background()
	repo := scanRepoOf("hub", "team/app")
	old, recent := newScanImage(1, nil), newScanImage(1, nil)
	f.seed(repo, nil, "up", old)
	f.seed(repo, nil, "up", recent)
	// runGC runs two hours from now.
	pulls := map[digest.Digest]time.Time{old.digest: time.Now().Add(-48 * time.Hour), recent.digest: time.Now()}
	if err := f.st.RecordPulls(ctx, repo, pulls); err != nil {
		t.Fatal(err)
	}
	base := `
connectors: [{name: up, url: "http://127.0.0.1:1"}]
registries:
  - name: hub
    connectors: [up]`
	if rep := f.runGC(f.config(base)); len(rep.Removed) != 0 {
		t.Fatalf("without retention: removed %q", removedList(rep))
	}
	rep := f.runGC(f.config(base + "\n    retention: {unpulled_for: 24h}"))
	want := []string{fmt.Sprintf("unpulled manifest hub/team/app:@%s %d", old.digest, len(old.data))}
	for d, b := range old.blobs {
		want = append(want, fmt.Sprintf("unpulled blob %s %d", d, len(b)))
	}
	sort.Strings(want)
	if got := removedList(rep); !slices.Equal(got, want) {
		t.Errorf("removals\n got %q\nwant %q", got, want)
	}
	if !f.hasContent(recent.digest) {
		t.Error("the recently pulled manifest went")
	}
}
