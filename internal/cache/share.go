package cache

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/store"
)

// Sharing stored content between repositories.
//
// The store keeps one copy of each blob and links it into every repository
// that has it. A blob missing from a repository but stored for another one
// is linked into it without being fetched again only when that reveals
// nothing the access rules do not already allow:
//
//   - the copy is linked in (or being filled for) another repository of the
//     same registry, and one of this repository's connectors confirms it has
//     the digest (a HEAD). Access rules are per registry, so whoever may read
//     this repository may read that one too; the HEAD only keeps the
//     repository's content what its upstream says (sameReaders);
//   - the copy is linked in the same repository of the registry a local
//     connector of this repository reads: that registry's content is served
//     through this one by configuration (a promotion chain).
//
// Anything else, in particular a copy stored only for another registry (a
// private push, say), is fetched through this repository's own connectors
// and linked only once those bytes hashed to the digest: an upstream that
// merely answers HEAD 200 for any digest learns nothing and serves nothing.

// sameReaders reports whether everyone allowed to read repository a may
// read repository b. Access rules name registries, not repositories, so
// two repositories of one registry have the same readers. (If rules ever
// name repositories, this is the place to compare them.)
func sameReaders(a, b store.Repo) bool { return a.Registry == b.Registry }

// shareStored links d, stored already, into repo when the sharing rule
// allows it without a fetch, and reports whether it did. An error is a
// connector's answer (d unknown upstream, say) or a failed link.
func (c *Cache) shareStored(ctx context.Context, repo store.Repo, d digest.Digest, sources []connector.Source) (bool, error) {
	for _, src := range sources {
		if l, ok := src.(*connector.Local); ok {
			if _, err := c.store.StatBlob(ctx, store.Repo{Registry: l.Registry(), Name: repo.Name}, d); err == nil {
				return true, c.linkShared(ctx, repo, d, src.Name())
			}
		}
	}
	if !c.storedInRegistry(ctx, repo, d) {
		return false, nil
	}
	_, src, err := c.headBlob(ctx, repo, d, sources)
	if err != nil {
		return false, err
	}
	return true, c.linkShared(ctx, repo, d, src)
}

func (c *Cache) linkShared(ctx context.Context, repo store.Repo, d digest.Digest, src string) error {
	if err := c.store.LinkBlob(ctx, repo, d); err != nil {
		return err
	}
	c.log.Debug("blob linked", "registry", repo.Registry, "repo", repo.Name, "digest", d, "connector", src)
	return nil
}

// sharedScanMax bounds the repositories storedInRegistry looks at: past
// it, a shared blob is fetched again rather than searched for.
const sharedScanMax = 4096

var errFound = errors.New("found")

// storedInRegistry reports whether d is linked in a repository with the
// same readers as repo (sameReaders: one of its registry).
func (c *Cache) storedInRegistry(ctx context.Context, repo store.Repo, d digest.Digest) bool {
	seen := 0
	err := c.store.Repositories(ctx, repo.Registry, func(other store.Repo) error {
		if seen++; seen > sharedScanMax {
			return errSharedScanLimit
		}
		if !sameReaders(repo, other) {
			return nil
		}
		if _, err := c.store.StatBlob(ctx, other, d); err == nil {
			return errFound
		}
		return ctx.Err()
	})
	return errors.Is(err, errFound)
}

var errSharedScanLimit = errors.New("shared blob scan limit")
