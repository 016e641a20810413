package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
)

// RegistryInventory is what one registry stores, as retention and
// `regwarm usage` see it.
type RegistryInventory struct {
	Registry string
	// Images are the registry's tags and its manifests pulled by digest
	// that no tag reaches (see Image).
	Images []*Image
	// Loose is the other stored content: what only manifests outside every
	// image reach (untagged manifests never pulled by digest).
	Loose map[digest.Digest]int64
	// Bytes is the distinct size of every linked manifest and the stored
	// blobs they reference: Images and Loose together.
	Bytes int64
	// Repositories has each repository's usage, in lexical order.
	Repositories []RepoInventory
}

// RepoInventory is one repository's usage.
type RepoInventory struct {
	Name string
	// Bytes is the distinct size of the repository's linked manifests and
	// the stored blobs they reference (content shared with other
	// repositories counts in each).
	Bytes      int64
	Tags       int
	LastPulled time.Time // zero: never pulled
}

// node is a stored manifest: its size and what it references.
type node struct {
	size      int64
	manifests []digest.Digest // index children and referrers
	blobs     []digest.Digest
}

// inventory walks one registry, remembering blob sizes across
// repositories.
type inventory struct {
	st        store.Store
	blobSizes map[digest.Digest]int64 // -1: not stored
}

// Inventory lists registry's images and usage. Blobs a manifest references
// but the store lacks (not fetched yet) count nothing.
func Inventory(ctx context.Context, st store.Store, registry string) (*RegistryInventory, error) {
	inv := &inventory{st: st, blobSizes: map[digest.Digest]int64{}}
	out := &RegistryInventory{Registry: registry, Loose: map[digest.Digest]int64{}}
	all := map[digest.Digest]int64{}
	err := st.Repositories(ctx, registry, func(repo store.Repo) error {
		ri, err := inv.repo(ctx, repo, out)
		if err != nil {
			return fmt.Errorf("%s: %w", repo, err)
		}
		for d, n := range ri.content {
			all[d] = n
		}
		out.Repositories = append(out.Repositories, ri.RepoInventory)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, n := range all {
		out.Bytes += n
	}
	return out, nil
}

type repoResult struct {
	RepoInventory
	content map[digest.Digest]int64
}

// repo adds repo's images and loose content to out and returns its usage.
func (inv *inventory) repo(ctx context.Context, repo store.Repo, out *RegistryInventory) (repoResult, error) {
	res := repoResult{RepoInventory: RepoInventory{Name: repo.Name}, content: map[digest.Digest]int64{}}
	pulls := map[digest.Digest]time.Time{}
	if pr, ok := inv.st.(store.PullRecorder); ok {
		var err error
		if pulls, err = pr.LastPulled(ctx, repo); err != nil {
			return res, err
		}
	}
	var linked []digest.Digest
	if err := inv.st.Manifests(ctx, repo, func(d digest.Digest) error { linked = append(linked, d); return nil }); err != nil {
		return res, err
	}
	isLinked := map[digest.Digest]bool{}
	for _, d := range linked {
		isLinked[d] = true
	}
	nodes := map[digest.Digest]*node{}
	closure := func(root digest.Digest) (map[digest.Digest]int64, error) {
		c := map[digest.Digest]int64{}
		return c, inv.reach(ctx, repo, root, nodes, c)
	}
	reached := map[digest.Digest]bool{}
	image := func(im *Image) {
		for d := range im.Content {
			reached[d] = true
			if t := pulls[d]; t.After(im.LastPulled) {
				im.LastPulled = t
			}
		}
		out.Images = append(out.Images, im)
	}

	tags, err := inv.st.Tags(ctx, repo)
	if err != nil && !errors.Is(err, store.ErrNameUnknown) {
		return res, err
	}
	res.Tags = len(tags)
	for _, tag := range tags {
		ti, err := inv.st.Tag(ctx, repo, tag)
		if errors.Is(err, store.ErrTagUnknown) {
			continue // deleted meanwhile
		}
		if err != nil {
			return res, err
		}
		c, err := closure(ti.Digest)
		if err != nil {
			return res, err
		}
		image(&Image{Repo: repo, Tag: tag, Manifest: ti.Digest, Content: c, Since: ti.Checked, Pushed: ti.Source == ""})
	}
	for _, d := range linked {
		t, pulled := pulls[d]
		if !pulled || reached[d] {
			continue
		}
		m, err := inv.st.Manifest(ctx, repo, d)
		if errors.Is(err, store.ErrManifestUnknown) {
			continue
		}
		if err != nil {
			return res, err
		}
		c, err := closure(d)
		if err != nil {
			return res, err
		}
		image(&Image{Repo: repo, Manifest: d, Content: c, Since: t, Pushed: m.Source == ""})
	}
	for _, d := range linked {
		c, err := closure(d)
		if err != nil {
			return res, err
		}
		for k, n := range c {
			res.content[k] = n
			if !reached[d] {
				out.Loose[k] = n
			}
		}
	}
	for _, n := range res.content {
		res.Bytes += n
	}
	for d, t := range pulls {
		if isLinked[d] && t.After(res.LastPulled) {
			res.LastPulled = t
		}
	}
	return res, nil
}

// reach adds root and everything it reaches in repo to c.
func (inv *inventory) reach(ctx context.Context, repo store.Repo, root digest.Digest, nodes map[digest.Digest]*node, c map[digest.Digest]int64) error {
	stack := []digest.Digest{root}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if _, seen := c[d]; seen {
			continue
		}
		n, err := inv.node(ctx, repo, d, nodes)
		if err != nil {
			return err
		}
		if n == nil {
			continue // not stored here
		}
		c[d] = n.size
		stack = append(stack, n.manifests...)
		for _, b := range n.blobs {
			if _, seen := c[b]; seen {
				continue
			}
			size, err := inv.blobSize(ctx, b)
			if err != nil {
				return err
			}
			if size >= 0 {
				c[b] = size
			}
		}
	}
	return nil
}

// node reads manifest d of repo once; nil when it is not stored there.
func (inv *inventory) node(ctx context.Context, repo store.Repo, d digest.Digest, nodes map[digest.Digest]*node) (*node, error) {
	if n, ok := nodes[d]; ok {
		return n, nil
	}
	m, err := inv.st.Manifest(ctx, repo, d)
	if errors.Is(err, store.ErrManifestUnknown) {
		nodes[d] = nil
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	n := &node{size: int64(len(m.Data))}
	if p, err := manifest.Parse(m.MediaType, m.Data); err == nil {
		for _, ref := range p.References() {
			if manifest.IsIndex(p.MediaType) {
				n.manifests = append(n.manifests, ref.Digest)
			} else {
				n.blobs = append(n.blobs, ref.Digest)
			}
		}
	}
	refs, err := inv.st.Referrers(ctx, repo, d)
	if err != nil && !errors.Is(err, store.ErrManifestUnknown) {
		return nil, err
	}
	for _, r := range refs {
		n.manifests = append(n.manifests, r.Digest)
	}
	nodes[d] = n
	return n, nil
}

// blobSize returns a stored blob's size, -1 when absent.
func (inv *inventory) blobSize(ctx context.Context, d digest.Digest) (int64, error) {
	if n, ok := inv.blobSizes[d]; ok {
		return n, nil
	}
	n, err := inv.st.HasBlob(ctx, d)
	if errors.Is(err, store.ErrBlobUnknown) {
		n, err = -1, nil
	}
	if err != nil {
		return 0, err
	}
	inv.blobSizes[d] = n
	return n, nil
}
