package connector

import (
	"context"
	"io"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Manifest is a manifest as the source served it.
type Manifest struct {
	MediaType string
	Digest    digest.Digest
	Data      []byte
}

// Source is one connector: where a registry's content comes from when it
// is not local. repo is always the local repository name; a Source maps it
// to its own namespace (Docker Hub's library/ prefix, for instance).
type Source interface {
	// Name is the connector's configured name.
	Name() string
	// Allowed reports whether repo passes the include/exclude filters.
	Allowed(repo string) bool
	// HeadManifest resolves a tag or digest without fetching the body.
	HeadManifest(ctx context.Context, repo, reference string) (ocispec.Descriptor, error)
	// GetManifest fetches a manifest by tag or digest. The returned digest
	// was computed from the bytes, and matches reference when it is one.
	GetManifest(ctx context.Context, repo, reference string) (Manifest, error)
	// HeadBlob returns a blob's size.
	HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error)
	// GetBlob opens a blob; size is -1 when unknown. The caller verifies
	// the digest while reading.
	GetBlob(ctx context.Context, repo string, d digest.Digest) (rc io.ReadCloser, size int64, err error)
	// Tags lists the repository's tags.
	Tags(ctx context.Context, repo string) ([]string, error)
	// Referrers lists manifests whose subject is d.
	Referrers(ctx context.Context, repo string, d digest.Digest) ([]ocispec.Descriptor, error)
}

// Filter holds include/exclude repository globs (path.Match syntax, so
// "*" does not cross "/"; a pattern ending in "/**" matches everything
// below its prefix).
type Filter struct {
	Include, Exclude []string
}

// Allowed reports whether repo passes the filter: it must match an include
// pattern (when there are any) and no exclude pattern.
func (f Filter) Allowed(repo string) bool {
	if len(f.Include) > 0 && !matchAny(f.Include, repo) {
		return false
	}
	return !matchAny(f.Exclude, repo)
}

func matchAny(patterns []string, repo string) bool {
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "/**"); ok {
			if ok, _ := path.Match(prefix, repo); ok {
				return true
			}
			parts := strings.Split(repo, "/")
			for i := 1; i < len(parts); i++ {
				if ok, _ := path.Match(prefix, strings.Join(parts[:i], "/")); ok {
					return true
				}
			}
			continue
		}
		if ok, _ := path.Match(p, repo); ok {
			return true
		}
	}
	return false
}
