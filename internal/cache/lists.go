package cache

import (
	"context"
	"errors"
	"slices"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
)

// tags lists the union of local tags and the first connector's tags that
// answers. When every connector fails, local tags are returned.
func (c *Cache) tags(ctx context.Context, m mode, repo store.Repo) ([]string, error) {
	local, lerr := c.store.Tags(ctx, repo)
	if lerr != nil && !errors.Is(lerr, store.ErrNameUnknown) {
		return nil, lerr
	}
	if pending := c.pending.tagNames(repo); len(pending) > 0 {
		local, lerr = union(local, pending), nil
	}
	sources := c.sources(m, repo)
	if len(sources) == 0 {
		return local, lerr
	}
	var lastErr error
	for _, src := range sources {
		up, err := src.Tags(ctx, repo.Name)
		if err != nil {
			lastErr = keepFailure(lastErr, err)
			continue
		}
		return union(local, up), nil
	}
	if lerr == nil {
		c.log.Warn("tag list from the store only", "registry", repo.Registry, "repo", repo.Name, "error", lastErr)
		return local, nil
	}
	if lastErr != nil && !connector.IsNotFound(lastErr) {
		return nil, lastErr
	}
	return nil, lerr
}

func union(a, b []string) []string {
	set := make(map[string]struct{}, len(a)+len(b))
	for _, s := range a {
		set[s] = struct{}{}
	}
	for _, s := range b {
		set[s] = struct{}{}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// referrers lists local referrers of d plus those of the first connector
// that answers (pulled through); a failing connector leaves the local list.
func (c *Cache) referrers(ctx context.Context, m mode, repo store.Repo, d digest.Digest) ([]ocispec.Descriptor, error) {
	local, lerr := c.store.Referrers(ctx, repo, d)
	if lerr != nil && !errors.Is(lerr, store.ErrNameUnknown) {
		return nil, lerr
	}
	for _, p := range c.pending.referrers(repo, d) {
		if !slices.ContainsFunc(local, func(x ocispec.Descriptor) bool { return x.Digest == p.Digest }) {
			local = append(local, p)
		}
	}
	if release, err := c.yield(ctx, m); err == nil { // background work: clients first
		defer release()
	}
	for _, src := range c.sources(m, repo) {
		up, err := src.Referrers(ctx, repo.Name, d)
		if err != nil {
			continue
		}
		seen := make(map[digest.Digest]bool, len(local))
		for _, x := range local {
			seen[x.Digest] = true
		}
		for _, x := range up {
			if !seen[x.Digest] {
				local = append(local, x)
				seen[x.Digest] = true
			}
		}
		break
	}
	sort.Slice(local, func(i, j int) bool { return local[i].Digest < local[j].Digest })
	return local, nil
}
