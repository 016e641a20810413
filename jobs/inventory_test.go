package jobs

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
)

// objSize is the stored size of o and its blobs.
func objSize(objs ...scanObject) int64 {
	seen := map[digest.Digest]bool{}
	var n int64
	for _, o := range objs {
		if !seen[o.digest] {
			seen[o.digest] = true
			n += int64(len(o.data))
		}
		for d, b := range o.blobs {
			if !seen[d] {
				seen[d] = true
				n += int64(len(b))
			}
		}
	}
	return n
}

// TestInventoryAndUsage stores an index with two platform manifests
// sharing a layer and a signature, a second repository sharing a layer, a
// manifest pulled by digest only and an untagged manifest never pulled,
// and checks the images, bytes and usage report built from them.
func TestInventoryAndUsage(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t)
	ctx := context.Background()
	app, base := scanRepoOf("hub", "team/app"), scanRepoOf("hub", "team/base")
	amd := newScanImage(2, nil)
	arm := newScanImage(1, []scanObject{amd}) // shares amd's layers
	ix := newScanIndex(amd, arm)
	sig := newScanReferrer(ix)
	f.seed(app, nil, "up", amd)
	f.seed(app, nil, "up", arm)
	f.seed(app, nil, "up", ix, "v1", "latest")
	f.seed(app, nil, "up", sig)
	byDigest := newScanImage(1, nil)
	f.seed(app, nil, "up", byDigest)
	loose := newScanImage(1, nil)
	f.seed(app, nil, "up", loose)
	other := newScanImage(1, []scanObject{amd})
	f.seed(base, nil, "", other, "1.0")

	pulled := time.Date(2026, 5, 4, 3, 2, 1, 0, time.UTC)
	if err := f.st.RecordPulls(ctx, app, map[digest.Digest]time.Time{arm.digest: pulled, byDigest.digest: pulled.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	inv, err := Inventory(ctx, f.st, "hub")
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]*Image{}
	for _, im := range inv.Images {
		images[im.Repo.Name+":"+im.Tag] = im
	}
	if len(images) != 4 {
		t.Fatalf("images %v, want team/app:v1, :latest, :(by digest), team/base:1.0", images)
	}
	v1 := images["team/app:v1"]
	if want := objSize(ix, amd, arm, sig); contentSize(inv.Table, v1) != want || !v1.LastPulled.Equal(pulled) || v1.Pushed {
		t.Errorf("team/app:v1 = %d bytes, pulled %v, pushed %v; want %d, %v, false", contentSize(inv.Table, v1), v1.LastPulled, v1.Pushed, want, pulled)
	}
	dig := images["team/app:"]
	if dig == nil || dig.Manifest != byDigest.digest || contentSize(inv.Table, dig) != objSize(byDigest) {
		t.Errorf("image pulled by digest: %+v", dig)
	}
	if b := images["team/base:1.0"]; b == nil || !b.Pushed || !b.LastPulled.IsZero() {
		t.Errorf("pushed image: %+v", b)
	}
	if got := sumSizes(inv.Table, inv.Loose); got != objSize(loose) {
		t.Errorf("loose %d bytes, want %d", got, objSize(loose))
	}
	if want := objSize(ix, amd, arm, sig, byDigest, loose, other); inv.Bytes != want {
		t.Errorf("registry bytes %d, want %d (shared layers once)", inv.Bytes, want)
	}

	cfg := f.config("registries: [{name: hub, push: true, retention: {max_bytes: 1GiB}}, {name: other, push: true}]")
	rep, err := Usage(ctx, usageRegistries(cfg), f.st, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Registries) != 2 || rep.Registries[0].MaxBytes != 1<<30 || rep.Registries[0].Bytes != inv.Bytes ||
		len(rep.Registries[1].Repositories) != 0 {
		t.Fatalf("usage %+v", rep)
	}
	repos := rep.Registries[0].Repositories
	if len(repos) != 2 || repos[0].Name != "team/app" || repos[0].Tags != 2 || repos[0].LastPulled != "2026-05-04T03:02:01Z" ||
		repos[1].Tags != 1 || repos[1].LastPulled != "" || repos[1].Bytes != objSize(other) {
		t.Errorf("repositories %+v", repos)
	}
	var js, text bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil || !strings.Contains(js.String(), `"last_pulled": "2026-05-04T03:02:01Z"`) {
		t.Errorf("json (%v):\n%s", err, js.String())
	}
	if err := rep.WriteText(&text); err != nil || !strings.Contains(text.String(), "team/base") || !strings.Contains(text.String(), "budget 1.0 GiB") {
		t.Errorf("text (%v):\n%s", err, text.String())
	}
	if _, err := Usage(ctx, usageRegistries(cfg), f.st, "nope"); err == nil {
		t.Error("unknown registry: no error")
	}
	if one, err := Usage(ctx, usageRegistries(cfg), f.st, "other"); err != nil || len(one.Registries) != 1 || one.Registries[0].Name != "other" {
		t.Errorf("--registry other: %+v %v", one, err)
	}
}

func contentSize(tab *Table, im *Image) int64 {
	if im == nil {
		return -1
	}
	return sumSizes(tab, im.Content)
}

// sumSizes adds the sizes of distinct table indexes.
func sumSizes(tab *Table, ids []int32) int64 {
	var n int64
	seen := map[int32]bool{}
	for _, i := range ids {
		if seen[i] {
			continue
		}
		seen[i] = true
		n += tab.Size(i)
	}
	return n
}

// TestRetentionPlanFromInventory plans retention over a real store's
// inventory: the least recently pulled connector images go until the
// registry fits, the recently pulled index (counted once with its shared
// layers) stays, and kept and pushed images stay though pulled long ago.
func TestRetentionPlanFromInventory(t *testing.T) {
	t.Parallel()
	f := newScanFixture(t)
	ctx := context.Background()
	now := time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC)
	seed := func(name, tag, source string, hoursAgo int, objs ...scanObject) {
		repo := scanRepoOf("hub", name)
		for i, o := range objs {
			if i == len(objs)-1 {
				f.seed(repo, nil, source, o, tag)
			} else {
				f.seed(repo, nil, source, o)
			}
		}
		root := objs[len(objs)-1].digest
		if err := f.st.RecordPulls(ctx, repo, map[digest.Digest]time.Time{root: now.Add(-time.Duration(hoursAgo) * time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	amd := newScanImage(2, nil)
	arm := newScanImage(1, []scanObject{amd})
	multi := newScanIndex(amd, arm)
	old, mid := newScanImage(2, nil), newScanImage(2, nil)
	kept, mine := newScanImage(2, nil), newScanImage(2, nil)
	seed("team/multi", "v1", "up", 1, amd, arm, multi)
	seed("team/old", "v1", "up", 48, old)
	seed("team/mid", "v1", "up", 10, mid)
	seed("team/kept", "latest", "up", 100, kept)
	seed("team/mine", "v1", "", 200, mine)

	inv, err := Inventory(ctx, f.st, "hub")
	if err != nil {
		t.Fatal(err)
	}
	if want := objSize(amd, arm, multi, old, mid, kept, mine); inv.Bytes != want {
		t.Fatalf("inventory %d bytes, want %d", inv.Bytes, want)
	}
	budget := objSize(amd, arm, multi, kept, mine) + 1
	policy := &config.Retention{MaxBytes: config.ByteSize(budget), Keep: []string{"team/kept:*"}}
	p := PlanRetention(policy, inv.Table, inv.Images, inv.Loose, now)
	want := []string{
		fmt.Sprintf("team/old:v1 over-budget %d", objSize(old)),
		fmt.Sprintf("team/mid:v1 over-budget %d", objSize(mid)),
	}
	if got := summary(p); !slices.Equal(got, want) {
		t.Errorf("removals %q, want %q", got, want)
	}
	if p.BytesBefore != inv.Bytes || p.BytesAfter != budget-1 || p.OverBudget {
		t.Errorf("before %d after %d over %v; want %d %d false", p.BytesBefore, p.BytesAfter, p.OverBudget, inv.Bytes, budget-1)
	}
}
