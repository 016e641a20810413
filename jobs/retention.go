package jobs

import (
	"cmp"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// Retention reasons, as the gc report names them.
const (
	ReasonOverBudget = "over-budget"
	ReasonUnpulled   = "unpulled"
)

// Image is one unit of retention in a registry: a tag with everything it
// reaches (an index, its platform manifests, their referrers, configs and
// layers), or a manifest pulled by digest that no tag reaches (Tag "").
type Image struct {
	Repo     store.Repo
	Tag      string        // "" for a manifest pulled by digest
	Manifest digest.Digest // the tag's target, or the pulled manifest
	// Content is every stored manifest and blob the image reaches, as
	// distinct indexes into the inventory's Table (which has their sizes).
	// Images may share content; it is counted once.
	Content []int32
	// LastPulled is the latest client pull of any manifest the image
	// reaches; zero when never pulled.
	LastPulled time.Time
	// Since is when the image was stored or its tag last confirmed; an
	// image never pulled counts as last used then.
	Since time.Time
	// Pushed is true for content pushed by clients (not from a connector).
	Pushed bool
}

// LastUsed is what least-recently-pulled order and unpulled_for compare:
// LastPulled, or Since for an image never pulled. Worker syncs and jobs
// that touch a pulled image do not make it younger.
func (im *Image) LastUsed() time.Time {
	if !im.LastPulled.IsZero() {
		return im.LastPulled
	}
	return im.Since
}

// Removal is an image retention removes, and why.
type Removal struct {
	Image  *Image
	Reason string // ReasonOverBudget or ReasonUnpulled
	// Bytes is the content that no remaining image reaches any more once
	// this one (and the removals before it) are gone.
	Bytes int64
}

// RetentionPlan is what retention decides for one registry.
type RetentionPlan struct {
	Removals []Removal
	// BytesBefore and BytesAfter are the registry's distinct content
	// (images plus Loose) before and after the removals.
	BytesBefore, BytesAfter int64
	// OverBudget is true when the registry still exceeds max_bytes after
	// every removable image went (kept or pushed images fill it).
	OverBudget bool
}

// PlanRetention decides which of a registry's images retention removes. It
// is pure: images come from Inventory (or a test), nothing is read or
// deleted; tab has the sizes of what their Content and loose name. loose
// is the registry's other stored content (manifests no image reaches, with
// what they reference); it counts toward the budget but is never planned
// for removal here (gc removes it as untagged).
//
// Rules, in order:
//   - an image a keep pattern matches (an image without tag is matched as
//     tag "") is never removed, nor pushed content unless policy.Pushed;
//   - with unpulled_for, an image not used (LastUsed) within it goes, as
//     ReasonUnpulled;
//   - with max_bytes, while the distinct bytes of what remains exceed it,
//     the least recently used removable image goes, as ReasonOverBudget.
//
// A nil policy removes nothing. Memory: a counter per table index.
func PlanRetention(policy *config.Retention, tab *Table, images []*Image, loose []int32, now time.Time) RetentionPlan {
	refs := make([]int32, tab.Len())
	var total int64
	add := func(content []int32) {
		for _, i := range content {
			if refs[i] == 0 {
				total += tab.Size(i)
			}
			refs[i]++
		}
	}
	drop := func(content []int32) (freed int64) {
		for _, i := range content {
			if refs[i]--; refs[i] == 0 {
				freed += tab.Size(i)
			}
		}
		total -= freed
		return freed
	}
	for _, im := range images {
		add(im.Content)
	}
	add(loose)
	plan := RetentionPlan{BytesBefore: total}
	if policy == nil {
		plan.BytesAfter = total
		return plan
	}

	var removable []*Image
	for _, im := range images {
		if !policy.Keeps(im.Repo.Name, im.Tag) && (policy.Pushed || !im.Pushed) {
			removable = append(removable, im)
		}
	}
	slices.SortStableFunc(removable, func(a, b *Image) int {
		return cmp.Or(a.LastUsed().Compare(b.LastUsed()), cmp.Compare(a.Repo.Name, b.Repo.Name),
			cmp.Compare(a.Tag, b.Tag), cmp.Compare(a.Manifest, b.Manifest))
	})
	if age := policy.UnpulledFor.D(); age > 0 {
		kept := removable[:0]
		for _, im := range removable {
			if now.Sub(im.LastUsed()) >= age {
				plan.Removals = append(plan.Removals, Removal{Image: im, Reason: ReasonUnpulled, Bytes: drop(im.Content)})
			} else {
				kept = append(kept, im)
			}
		}
		removable = kept
	}
	if budget := int64(policy.MaxBytes); budget > 0 {
		for _, im := range removable {
			if total <= budget {
				break
			}
			plan.Removals = append(plan.Removals, Removal{Image: im, Reason: ReasonOverBudget, Bytes: drop(im.Content)})
		}
		plan.OverBudget = total > budget
	}
	plan.BytesAfter = total
	return plan
}
