package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
)

// Repositories calls fn for each repository of registry ("" for all) in
// lexical order of "registry/name". Only one directory listing is held in
// memory at a time per level.
func (f *FS) Repositories(ctx context.Context, registry string, fn func(Repo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var regs []string
	if registry != "" {
		if err := ref.ValidRegistry(registry); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		regs = []string{registry}
	} else {
		entries, err := readDir(filepath.Join(f.root, "registries"))
		if err != nil {
			return fmt.Errorf("list registries: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() && ref.ValidRegistry(e.Name()) == nil {
				regs = append(regs, e.Name())
			}
		}
		// "hub-x/…" sorts before "hub/…": compare with the separator.
		slices.SortFunc(regs, func(a, b string) int { return strings.Compare(a+"/", b+"/") })
	}
	for _, reg := range regs {
		dir := filepath.Join(f.root, "registries", reg, "repos")
		if err := walkRepos(ctx, reg, dir, "", fn); err != nil {
			return err
		}
	}
	return nil
}

// walkRepos calls fn for every repository strictly below dir (whose name is
// prefix) in lexical order. A child "a" is a repository named ".../a" and
// the root of names ".../a/…"; the two sort apart ("a" < "a-b" < "a/b"), so
// each child yields two steps, ordered by "a" and "a/".
func walkRepos(ctx context.Context, reg, dir, prefix string, fn func(Repo) error) error {
	entries, err := readDir(dir)
	if err != nil {
		return fmt.Errorf("list repositories: %w", err)
	}
	type step struct {
		key, child string
		self       bool
	}
	var steps []step
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() || strings.HasPrefix(n, "_") || strings.HasPrefix(n, ".") {
			continue
		}
		steps = append(steps, step{key: n, child: n, self: true}, step{key: n + "/", child: n})
	}
	slices.SortFunc(steps, func(a, b step) int { return strings.Compare(a.key, b.key) })
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := path.Join(prefix, s.child)
		child := filepath.Join(dir, s.child)
		if !s.self {
			if err := walkRepos(ctx, reg, child, name, fn); err != nil {
				return err
			}
			continue
		}
		if isRepoDir(child) && ref.ValidName(name) == nil {
			if err := fn(Repo{Registry: reg, Name: name}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Manifests calls fn for each manifest digest linked in repo, sorted by
// digest. A repository without manifests yields nothing.
func (f *FS) Manifests(ctx context.Context, repo Repo, fn func(digest.Digest) error) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	dir := filepath.Join(f.repoDir(repo), "_manifests")
	return walkDigests(ctx, dir, false, func(d digest.Digest, _ fs.DirEntry) error { return fn(d) })
}

// Blobs calls fn for each blob in the store, manifests included, sorted by
// digest.
func (f *FS) Blobs(ctx context.Context, fn func(d digest.Digest, size int64) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return walkDigests(ctx, filepath.Join(f.root, "blobs"), true, func(d digest.Digest, e fs.DirEntry) error {
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		if err != nil {
			return fmt.Errorf("stat blob %s: %w", d, err)
		}
		return fn(d, info.Size())
	})
}

// walkDigests calls fn for each file dir/<alg>/<hex>, or
// dir/<alg>/<first 2 hex>/<hex> when fanout is set, whose name is a valid
// digest. Other entries are skipped.
func walkDigests(ctx context.Context, dir string, fanout bool, fn func(digest.Digest, fs.DirEntry) error) error {
	algs, err := readDir(dir)
	if err != nil {
		return fmt.Errorf("list digests: %w", err)
	}
	for _, a := range algs {
		if !a.IsDir() {
			continue
		}
		algDir := filepath.Join(dir, a.Name())
		if !fanout {
			if err := walkHex(ctx, a.Name(), algDir, "", fn); err != nil {
				return err
			}
			continue
		}
		subs, err := readDir(algDir)
		if err != nil {
			return fmt.Errorf("list digests: %w", err)
		}
		for _, s := range subs {
			if s.IsDir() && len(s.Name()) == 2 {
				if err := walkHex(ctx, a.Name(), filepath.Join(algDir, s.Name()), s.Name(), fn); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// walkHex calls fn for each regular file of dir named by a valid hex of alg
// that starts with prefix.
func walkHex(ctx context.Context, alg, dir, prefix string, fn func(digest.Digest, fs.DirEntry) error) error {
	entries, err := readDir(dir)
	if err != nil {
		return fmt.Errorf("list digests: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		d, err := ref.ParseDigest(alg + ":" + e.Name())
		if err != nil {
			continue
		}
		if err := fn(d, e); err != nil {
			return err
		}
	}
	return nil
}

// readDir lists dir sorted by name; a missing directory is empty.
func readDir(dir string) ([]fs.DirEntry, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return entries, err
}
