package jobs

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
)

// RegistryInventory is what one registry stores, as retention and
// `regwarm usage` see it. Content is named by index into Table: a digest
// and a size are held once however many images reach them.
type RegistryInventory struct {
	Registry string
	// Table holds each stored manifest and blob the registry's manifests
	// reach (and blobs found absent, with size -1).
	Table *Table
	// Images are the registry's tags and its manifests pulled by digest
	// that no tag reaches (see Image).
	Images []*Image
	// Loose is the other stored content, distinct: what only manifests
	// outside every image reach (untagged manifests never pulled by
	// digest).
	Loose []int32
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

// Table interns digests: each gets an index, and its size, once. The zero
// value is not usable; see NewTable.
type Table struct {
	index map[dkey]int32 // what ext does not hold
	// ext, when set, holds the indexes of the stored content it lists
	// (gc's blob map), so that they need no map of their own.
	ext   extIndex
	keys  []dkey
	sizes []int64                 // -1: not stored
	other map[int32]digest.Digest // digests not in sha256
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{index: map[dkey]int32{}, other: map[int32]digest.Digest{}} }

// extIndex keeps a table's indexes of stored content elsewhere.
type extIndex interface {
	// index returns k's index (-1: none yet) and size, ok=false when k
	// is not listed.
	index(k dkey) (i int32, size int64, ok bool)
	setIndex(k dkey, i int32)
}

// Add returns d's index, adding it with size when new. An entry whose
// size is unknown (negative) takes size.
func (t *Table) Add(d digest.Digest, size int64) int32 {
	k := key(d)
	i, ok := t.lookup(k)
	if ok {
		if t.sizes[i] < 0 {
			t.sizes[i] = size
		}
		return i
	}
	i = int32(len(t.keys))
	if _, _, listed := t.extIndex(k); listed {
		t.ext.setIndex(k, i)
	} else {
		t.index[k] = i
	}
	t.keys = append(t.keys, k)
	t.sizes = append(t.sizes, size)
	if d.Algorithm() != digest.SHA256 {
		t.other[i] = d
	}
	return i
}

// Lookup returns d's index.
func (t *Table) Lookup(d digest.Digest) (int32, bool) { return t.lookup(key(d)) }

func (t *Table) lookup(k dkey) (int32, bool) {
	if i, _, listed := t.extIndex(k); listed {
		return i, i >= 0
	}
	i, ok := t.index[k]
	return i, ok
}

// extIndex asks ext, when set, about k.
func (t *Table) extIndex(k dkey) (int32, int64, bool) {
	if t.ext == nil {
		return -1, 0, false
	}
	return t.ext.index(k)
}

// Len is the number of digests in the table.
func (t *Table) Len() int { return len(t.keys) }

// Size returns the size of the content at index i (-1: not stored).
func (t *Table) Size(i int32) int64 { return t.sizes[i] }

// Digest returns the digest at index i.
func (t *Table) Digest(i int32) digest.Digest {
	if d, ok := t.other[i]; ok {
		return d
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(t.keys[i][:]))
}

// node is a stored manifest: its index and what it references.
type node struct {
	id        int32
	manifests []digest.Digest // index children and referrers
	blobs     []int32         // stored blobs
}

// Per-index flags of a registry's inventory.
const (
	flagCounted uint8 = 1 << iota // in the registry's Bytes
	flagLoose                     // in Loose
)

// inventory walks one registry. Its memory is the table, a stamp and a
// flag per index, the images' index lists, and one repository's nodes.
type inventory struct {
	st    store.Store
	tab   *Table
	stamp []uint32 // per index: the last walk that reached it
	walk  uint32
	flags []uint8
}

// Inventory lists registry's images and usage. Blobs a manifest references
// but the store lacks (not fetched yet) count nothing.
func Inventory(ctx context.Context, st store.Store, registry string) (*RegistryInventory, error) {
	return inventoryOf(ctx, st, registry, nil)
}

// inventoryOf is Inventory with the table's stored content indexed in ext
// (nil: in the table), whose listing also gives blob sizes: a blob it
// does not list counts as not stored.
func inventoryOf(ctx context.Context, st store.Store, registry string, ext extIndex) (*RegistryInventory, error) {
	inv := &inventory{st: st, tab: NewTable()}
	inv.tab.ext = ext
	out := &RegistryInventory{Registry: registry, Table: inv.tab, Loose: []int32{}}
	err := st.Repositories(ctx, registry, func(repo store.Repo) error {
		ri, err := inv.repo(ctx, repo, out)
		if err != nil {
			return fmt.Errorf("%s: %w", repo, err)
		}
		out.Repositories = append(out.Repositories, ri)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// grow sizes the per-index slices to the table.
func (inv *inventory) grow() {
	if n := inv.tab.Len() - len(inv.stamp); n > 0 {
		inv.stamp = append(inv.stamp, make([]uint32, n)...)
		inv.flags = append(inv.flags, make([]uint8, n)...)
	}
}

// repo adds repo's images and loose content to out and returns its usage.
func (inv *inventory) repo(ctx context.Context, repo store.Repo, out *RegistryInventory) (RepoInventory, error) {
	res := RepoInventory{Name: repo.Name}
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
	isLinked := make(map[digest.Digest]bool, len(linked))
	for _, d := range linked {
		isLinked[d] = true
	}
	nodes := map[digest.Digest]*node{}
	reached := map[digest.Digest]bool{} // manifests images reach
	image := func(im *Image) error {
		err := inv.reach(ctx, repo, []digest.Digest{im.Manifest}, nodes, func(id int32, m digest.Digest) {
			im.Content = append(im.Content, id)
			if m == "" {
				return
			}
			reached[m] = true
			if t := pulls[m]; t.After(im.LastPulled) {
				im.LastPulled = t
			}
		})
		if err != nil {
			return err
		}
		im.Content = slices.Clip(im.Content)
		out.Images = append(out.Images, im)
		return nil
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
		if err := image(&Image{Repo: repo, Tag: tag, Manifest: ti.Digest, Since: ti.Checked, Pushed: ti.Source == ""}); err != nil {
			return res, err
		}
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
		if err := image(&Image{Repo: repo, Manifest: d, Since: t, Pushed: m.Source == ""}); err != nil {
			return res, err
		}
	}
	// Loose: what the linked manifests outside every image reach.
	var loose []digest.Digest
	for _, d := range linked {
		if !reached[d] {
			loose = append(loose, d)
		}
	}
	if err := inv.reach(ctx, repo, loose, nodes, func(id int32, _ digest.Digest) {
		if inv.flags[id]&flagLoose == 0 {
			inv.flags[id] |= flagLoose
			out.Loose = append(out.Loose, id)
		}
	}); err != nil {
		return res, err
	}
	// The repository's bytes: what every linked manifest reaches, once.
	if err := inv.reach(ctx, repo, linked, nodes, func(id int32, _ digest.Digest) {
		n := inv.tab.Size(id)
		res.Bytes += n
		if inv.flags[id]&flagCounted == 0 {
			inv.flags[id] |= flagCounted
			out.Bytes += n
		}
	}); err != nil {
		return res, err
	}
	for d, t := range pulls {
		if isLinked[d] && t.After(res.LastPulled) {
			res.LastPulled = t
		}
	}
	return res, nil
}

// reach walks what roots reach in repo and calls fn once for each stored
// item, with its digest when it is a manifest ("" for a blob).
func (inv *inventory) reach(ctx context.Context, repo store.Repo, roots []digest.Digest, nodes map[digest.Digest]*node, fn func(id int32, manifest digest.Digest)) error {
	inv.walk++
	stack := slices.Clone(roots)
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n, err := inv.node(ctx, repo, d, nodes)
		if err != nil {
			return err
		}
		if n == nil || !inv.visit(n.id) {
			continue // not stored here, or seen
		}
		fn(n.id, d)
		stack = append(stack, n.manifests...)
		for _, b := range n.blobs {
			if inv.visit(b) {
				fn(b, "")
			}
		}
	}
	return nil
}

// visit reports whether index i is new to the current walk, and marks it.
func (inv *inventory) visit(i int32) bool {
	if inv.stamp[i] == inv.walk {
		return false
	}
	inv.stamp[i] = inv.walk
	return true
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
	n := &node{id: inv.tab.Add(d, int64(len(m.Data)))}
	if p, err := manifest.Parse(m.MediaType, m.Data); err == nil {
		for _, ref := range p.References() {
			if manifest.IsIndex(p.MediaType) {
				n.manifests = append(n.manifests, ref.Digest)
				continue
			}
			id, err := inv.blob(ctx, ref.Digest)
			if err != nil {
				return nil, err
			}
			if id >= 0 {
				n.blobs = append(n.blobs, id)
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
	inv.grow()
	nodes[d] = n
	return n, nil
}

// blob returns a stored blob's index, -1 when the store lacks it (asked
// once per digest).
func (inv *inventory) blob(ctx context.Context, d digest.Digest) (int32, error) {
	if inv.tab.ext != nil {
		i, size, listed := inv.tab.ext.index(key(d))
		switch {
		case !listed:
			return -1, nil
		case i >= 0:
			return i, nil
		}
		return inv.tab.Add(d, size), nil
	}
	if i, ok := inv.tab.Lookup(d); ok {
		if inv.tab.Size(i) < 0 {
			return -1, nil
		}
		return i, nil
	}
	n, err := inv.st.HasBlob(ctx, d)
	if errors.Is(err, store.ErrBlobUnknown) {
		inv.tab.Add(d, -1)
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	return inv.tab.Add(d, n), nil
}
