package jobs

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

var t0 = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// d names test content.
func d(name string) digest.Digest { return digest.FromString(name) }

// retentionTable names the content of img's images. Only
// TestPlanRetention adds to it, while building its cases (before its
// subtests run and read it).
var retentionTable = NewTable()

// ids adds named content with the given sizes to retentionTable. Content
// is named by name and size: cases reuse names with other sizes.
func ids(content map[string]int64) []int32 {
	out := []int32{}
	for k, n := range content {
		out = append(out, retentionTable.Add(d(fmt.Sprintf("%s/%d", k, n)), n))
	}
	return out
}

// img builds an image of repo:tag pulled ago hours before t0 (-1: never),
// reaching the named content with the given sizes.
func img(repo, tag string, pulledHoursAgo int, content map[string]int64) *Image {
	im := &Image{Repo: store.Repo{Registry: "hub", Name: repo}, Tag: tag, Manifest: d(repo + ":" + tag),
		Content: ids(content), Since: t0.Add(-1000 * time.Hour)}
	if pulledHoursAgo >= 0 {
		im.LastPulled = t0.Add(-time.Duration(pulledHoursAgo) * time.Hour)
	}
	return im
}

func pushed(im *Image) *Image { im.Pushed = true; return im }

// summary is "repo:tag reason bytes" per removal.
func summary(p RetentionPlan) []string {
	var out []string
	for _, r := range p.Removals {
		out = append(out, fmt.Sprintf("%s:%s %s %d", r.Image.Repo.Name, r.Image.Tag, r.Reason, r.Bytes))
	}
	return out
}

func TestPlanRetention(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		policy     *config.Retention
		images     []*Image
		loose      []int32
		want       []string
		before     int64
		after      int64
		overBudget bool
	}{
		{
			name:   "no policy keeps everything",
			images: []*Image{img("a", "1", 5, map[string]int64{"m1": 10, "l1": 100})},
			before: 110, after: 110,
		},
		{
			name:   "under budget",
			policy: &config.Retention{MaxBytes: 1000},
			images: []*Image{img("a", "1", 5, map[string]int64{"m1": 10, "l1": 100})},
			before: 110, after: 110,
		},
		{
			name:   "least recently pulled first until it fits",
			policy: &config.Retention{MaxBytes: 200},
			images: []*Image{
				img("a", "new", 1, map[string]int64{"ma": 10, "la": 100}),
				img("b", "old", 50, map[string]int64{"mb": 10, "lb": 100}),
				img("c", "mid", 10, map[string]int64{"mc": 10, "lc": 100}),
			},
			want:   []string{"b:old over-budget 110", "c:mid over-budget 110"},
			before: 330, after: 110,
		},
		{
			name:   "never pulled counts from when it was stored",
			policy: &config.Retention{MaxBytes: 150},
			images: []*Image{
				img("a", "pulled", 2000, map[string]int64{"ma": 100}),
				func() *Image {
					im := img("b", "fresh", -1, map[string]int64{"mb": 100})
					im.Since = t0.Add(-time.Hour)
					return im
				}(),
			},
			want:   []string{"a:pulled over-budget 100"},
			before: 200, after: 100,
		},
		{
			name:   "keep globs are never removed but count toward the total",
			policy: &config.Retention{MaxBytes: 150, Keep: []string{"library/*:latest", "team/*:v*"}},
			images: []*Image{
				img("library/alpine", "latest", 100, map[string]int64{"m1": 100}),
				img("team/app", "v1", 90, map[string]int64{"m2": 100}),
				img("library/alpine", "3.20", 1, map[string]int64{"m3": 100}),
			},
			want:   []string{"library/alpine:3.20 over-budget 100"},
			before: 300, after: 200, overBudget: true,
		},
		{
			name:   "pushed content is excluded by default",
			policy: &config.Retention{MaxBytes: 100},
			images: []*Image{
				pushed(img("mine", "1", 100, map[string]int64{"m1": 100})),
				img("up", "1", 1, map[string]int64{"m2": 100}),
			},
			want:   []string{"up:1 over-budget 100"},
			before: 200, after: 100,
		},
		{
			name:   "pushed content with pushed: true",
			policy: &config.Retention{MaxBytes: 100, Pushed: true},
			images: []*Image{
				pushed(img("mine", "1", 100, map[string]int64{"m1": 100})),
				img("up", "1", 1, map[string]int64{"m2": 100}),
			},
			want:   []string{"mine:1 over-budget 100"},
			before: 200, after: 100,
		},
		{
			name:   "index with platform manifests counted once",
			policy: &config.Retention{MaxBytes: 400},
			images: []*Image{
				// An index reaching two platform manifests that share a layer.
				img("multi", "1", 10, map[string]int64{"index": 5, "amd64": 5, "arm64": 5, "shared": 200, "cfg1": 1, "cfg2": 1}),
				img("single", "1", 1, map[string]int64{"m": 5, "l": 100}),
			},
			before: 322, after: 322,
		},
		{
			name:   "shared blobs are counted once and freed with the last image",
			policy: &config.Retention{MaxBytes: 150},
			images: []*Image{
				img("a", "1", 30, map[string]int64{"ma": 10, "base": 100, "top-a": 50}),
				img("b", "1", 20, map[string]int64{"mb": 10, "base": 100, "top-b": 50}),
				img("c", "1", 1, map[string]int64{"mc": 10, "top-c": 20}),
			},
			// a frees only its own 60; b then frees 60 + the shared 100.
			want:   []string{"a:1 over-budget 60", "b:1 over-budget 160"},
			before: 250, after: 30,
		},
		{
			name:   "two tags of one manifest: the first removal frees nothing",
			policy: &config.Retention{MaxBytes: 50},
			images: []*Image{
				img("a", "old", 30, map[string]int64{"m": 10, "l": 100}),
				img("a", "new", 20, map[string]int64{"m": 10, "l": 100}),
			},
			want:   []string{"a:old over-budget 0", "a:new over-budget 110"},
			before: 110, after: 0,
		},
		{
			name:   "unpulled_for",
			policy: &config.Retention{UnpulledFor: config.Duration(24 * time.Hour), Keep: []string{"k:*"}},
			images: []*Image{
				img("a", "stale", 48, map[string]int64{"ma": 10}),
				img("b", "recent", 2, map[string]int64{"mb": 10}),
				img("k", "stale", 48, map[string]int64{"mk": 10}),
				img("c", "never", -1, map[string]int64{"mc": 10}), // stored 1000h ago
			},
			want:   []string{"c:never unpulled 10", "a:stale unpulled 10"},
			before: 40, after: 20,
		},
		{
			name:   "a sync after the last pull does not make an image younger",
			policy: &config.Retention{UnpulledFor: config.Duration(24 * time.Hour)},
			images: []*Image{func() *Image {
				im := img("a", "synced", 48, map[string]int64{"ma": 10})
				im.Since = t0.Add(-time.Minute) // tag confirmed by a worker just now
				return im
			}()},
			want:   []string{"a:synced unpulled 10"},
			before: 10, after: 0,
		},
		{
			name:   "unpulled then budget",
			policy: &config.Retention{UnpulledFor: config.Duration(24 * time.Hour), MaxBytes: 100},
			images: []*Image{
				img("a", "stale", 48, map[string]int64{"ma": 100}),
				img("b", "1", 5, map[string]int64{"mb": 100}),
				img("c", "1", 1, map[string]int64{"mc": 100}),
			},
			want:   []string{"a:stale unpulled 100", "b:1 over-budget 100"},
			before: 300, after: 100,
		},
		{
			name:   "loose content counts toward the budget but is not planned",
			policy: &config.Retention{MaxBytes: 150},
			images: []*Image{img("a", "1", 5, map[string]int64{"ma": 100})},
			loose:  ids(map[string]int64{"untagged": 100}),
			want:   []string{"a:1 over-budget 100"},
			before: 200, after: 100,
		},
		{
			name:   "a digest-pulled image matches keep patterns as tag \"\"",
			policy: &config.Retention{MaxBytes: 1, Keep: []string{"a:*"}},
			images: []*Image{img("a", "", 5, map[string]int64{"ma": 100}), img("b", "", 1, map[string]int64{"mb": 100})},
			want:   []string{"b: over-budget 100"},
			before: 200, after: 100, overBudget: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := PlanRetention(tc.policy, retentionTable, tc.images, tc.loose, t0)
			if got := summary(p); !slices.Equal(got, tc.want) {
				t.Errorf("removals %q, want %q", got, tc.want)
			}
			if p.BytesBefore != tc.before || p.BytesAfter != tc.after || p.OverBudget != tc.overBudget {
				t.Errorf("before %d after %d over %v; want %d %d %v", p.BytesBefore, p.BytesAfter, p.OverBudget, tc.before, tc.after, tc.overBudget)
			}
		})
	}
}
