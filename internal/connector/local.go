package connector

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// Local is a connector to another local registry. It reads through a
// store.Reader, normally the pull-through cache, so chains such as
// release → prerelease → upstream resolve all the way.
type Local struct {
	name     string
	registry string
	filter   Filter
	read     store.Reader
}

var _ Source = (*Local)(nil)

// NewLocal returns a connector named name reading registry through r.
func NewLocal(name, registry string, f Filter, r store.Reader) *Local {
	return &Local{name: name, registry: registry, filter: f, read: r}
}

// Name returns the connector name.
func (l *Local) Name() string { return l.name }

// Registry returns the local registry this connector reads.
func (l *Local) Registry() string { return l.registry }

// Allowed reports whether repo passes the filters.
func (l *Local) Allowed(repo string) bool { return l.filter.Allowed(repo) }

func (l *Local) repo(name string) store.Repo { return store.Repo{Registry: l.registry, Name: name} }

func (l *Local) wrap(kind Kind, err error) error {
	if err == nil {
		return nil
	}
	var ce *Error
	if errors.As(err, &ce) {
		// A failure further down the chain keeps its status; name this hop.
		cp := *ce
		cp.Connector = l.name + "→" + ce.Connector
		return &cp
	}
	// What the other registry does not have is not found here either;
	// any other failure of this hop (a corrupt stored copy, a disk error)
	// is temporary, and no fault of the client's.
	e := &Error{Connector: l.name, Kind: kind, Err: err}
	if fault.Of(err) == fault.NotFound {
		e.Status, e.Err = http.StatusNotFound, ErrNotFound
	} else {
		e.Temporary = true
	}
	return e
}

func (l *Local) check(kind Kind, repo string) error {
	if !l.Allowed(repo) {
		return &Error{Connector: l.name, Kind: kind, Excluded: true, Err: ErrExcluded}
	}
	return nil
}

func (l *Local) resolve(ctx context.Context, repo, reference string) (store.Manifest, error) {
	var d digest.Digest
	if ref.IsDigest(reference) {
		var err error
		if d, err = ref.ParseDigest(reference); err != nil {
			return store.Manifest{}, err
		}
	} else {
		ti, err := l.read.Tag(ctx, l.repo(repo), reference)
		if err != nil {
			return store.Manifest{}, err
		}
		d = ti.Digest
	}
	return l.read.Manifest(ctx, l.repo(repo), d)
}

// HeadManifest resolves reference in the other registry.
func (l *Local) HeadManifest(ctx context.Context, repo, reference string) (ocispec.Descriptor, error) {
	if err := l.check(KindManifest, repo); err != nil {
		return ocispec.Descriptor{}, err
	}
	m, err := l.resolve(ctx, repo, reference)
	if err != nil {
		return ocispec.Descriptor{}, l.wrap(KindManifest, err)
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Data))}, nil
}

// GetManifest returns a manifest of the other registry.
func (l *Local) GetManifest(ctx context.Context, repo, reference string) (Manifest, error) {
	if err := l.check(KindManifest, repo); err != nil {
		return Manifest{}, err
	}
	m, err := l.resolve(ctx, repo, reference)
	if err != nil {
		return Manifest{}, l.wrap(KindManifest, err)
	}
	return Manifest{MediaType: m.MediaType, Digest: m.Digest, Data: m.Data}, nil
}

// HeadBlob returns a blob's size in the other registry.
func (l *Local) HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	if err := l.check(KindBlob, repo); err != nil {
		return 0, err
	}
	n, err := l.read.StatBlob(ctx, l.repo(repo), d)
	return n, l.wrap(KindBlob, err)
}

// GetBlob opens a blob of the other registry.
func (l *Local) GetBlob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error) {
	if err := l.check(KindBlob, repo); err != nil {
		return nil, 0, err
	}
	b, err := l.read.OpenBlob(ctx, l.repo(repo), d)
	if err != nil {
		return nil, 0, l.wrap(KindBlob, err)
	}
	return b, b.Size(), nil
}

// Tags lists the other registry's tags.
func (l *Local) Tags(ctx context.Context, repo string) ([]string, error) {
	if err := l.check(KindTags, repo); err != nil {
		return nil, err
	}
	t, err := l.read.Tags(ctx, l.repo(repo))
	return t, l.wrap(KindTags, err)
}

// Referrers lists the other registry's referrers of d.
func (l *Local) Referrers(ctx context.Context, repo string, d digest.Digest) ([]ocispec.Descriptor, error) {
	if err := l.check(KindReferrers, repo); err != nil {
		return nil, err
	}
	r, err := l.read.Referrers(ctx, l.repo(repo), d)
	return r, l.wrap(KindReferrers, err)
}
