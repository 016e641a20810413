package store

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
)

// Repositories calls fn for each repository of registry ("" for all) in
// lexical order of "registry/name", listing one level of keys at a time.
func (s *S3) Repositories(ctx context.Context, registry string, fn func(Repo) error) error {
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
		// Listed as "hub-x/" < "hub/": already the order of "registry/name".
		dirs, _, err := s.level(ctx, s.prefix+"repos/")
		if err != nil {
			return fmt.Errorf("list registries: %w", err)
		}
		for _, d := range dirs {
			if ref.ValidRegistry(d) == nil {
				regs = append(regs, d)
			}
		}
	}
	for _, reg := range regs {
		dir := s.prefix + "repos/" + reg + "/"
		children, _, err := s.level(ctx, dir)
		if err != nil {
			return fmt.Errorf("list repositories: %w", err)
		}
		if err := s.walkRepos(ctx, reg, dir, "", children, fn); err != nil {
			return err
		}
	}
	return nil
}

// level lists the child "directories" of dir (a key prefix ending in "/"),
// leaving out "_" ones, and reports whether dir is a repository (has a
// link or tag child).
func (s *S3) level(ctx context.Context, dir string) (children []string, repo bool, err error) {
	err = s.list(ctx, dir, false, func(obj minio.ObjectInfo) error {
		name, isDir := strings.CutSuffix(strings.TrimPrefix(obj.Key, dir), "/")
		if !isDir || name == "" || strings.Contains(name, "/") {
			return nil
		}
		switch {
		case name == "_blobs" || name == "_manifests" || name == "_tags":
			repo = true
		case !strings.HasPrefix(name, "_") && !strings.HasPrefix(name, "."):
			children = append(children, name)
		}
		return nil
	})
	return children, repo, err
}

// walkRepos calls fn for every repository strictly below dir (whose name
// is prefix and whose children are given) in lexical order; see the FS
// walk for the two steps per child.
func (s *S3) walkRepos(ctx context.Context, reg, dir, prefix string, children []string, fn func(Repo) error) error {
	type step struct {
		key, child string
		self       bool
	}
	steps := make([]step, 0, 2*len(children))
	for _, c := range children {
		steps = append(steps, step{key: c, child: c, self: true}, step{key: c + "/", child: c})
	}
	slices.SortFunc(steps, func(a, b step) int { return strings.Compare(a.key, b.key) })
	below := map[string][]string{} // a child's children, listed at its first step
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := path.Join(prefix, st.child)
		childDir := dir + st.child + "/"
		if !st.self {
			sub := below[st.child]
			delete(below, st.child)
			if err := s.walkRepos(ctx, reg, childDir, name, sub, fn); err != nil {
				return err
			}
			continue
		}
		sub, isRepo, err := s.level(ctx, childDir)
		if err != nil {
			return fmt.Errorf("list repositories: %w", err)
		}
		below[st.child] = sub
		if isRepo && ref.ValidName(name) == nil {
			if err := fn(Repo{Registry: reg, Name: name}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Manifests calls fn for each manifest digest linked in repo, sorted by
// digest.
func (s *S3) Manifests(ctx context.Context, repo Repo, fn func(digest.Digest) error) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	return s.walkDigests(ctx, s.repoKey(repo)+"_manifests/", func(d digest.Digest, _ minio.ObjectInfo) error { return fn(d) })
}

// Blobs calls fn for each blob in the store, manifests included, sorted by
// digest.
func (s *S3) Blobs(ctx context.Context, fn func(d digest.Digest, size int64) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.walkDigests(ctx, s.prefix+"blobs/", func(d digest.Digest, obj minio.ObjectInfo) error { return fn(d, obj.Size) })
}

// walkDigests calls fn for each object dir<alg>/<hex> whose name is a valid
// digest; other keys are skipped.
func (s *S3) walkDigests(ctx context.Context, dir string, fn func(digest.Digest, minio.ObjectInfo) error) error {
	return s.list(ctx, dir, true, func(obj minio.ObjectInfo) error {
		alg, hex, ok := strings.Cut(strings.TrimPrefix(obj.Key, dir), "/")
		if !ok {
			return nil
		}
		d, err := ref.ParseDigest(alg + ":" + hex)
		if err != nil {
			return nil
		}
		return fn(d, obj)
	})
}
