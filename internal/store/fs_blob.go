package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/opencontainers/go-digest"
)

// StatBlob returns the size of a blob linked in repo.
func (f *FS) StatBlob(ctx context.Context, repo Repo, d digest.Digest) (int64, error) {
	if err := check(ctx, repo, d); err != nil {
		return 0, err
	}
	if err := f.checkLinked(repo, d); err != nil {
		return 0, err
	}
	info, err := os.Stat(f.blobPath(d))
	if err == nil {
		// A client's HEAD is a use (it may push a manifest referencing
		// the blob next): garbage collection keeps it.
		err = f.touch(f.blobPath(d), info.ModTime())
	}
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s in %s: content missing", ErrBlobUnknown, d, repo)
	}
	if err != nil {
		return 0, fmt.Errorf("stat blob %s: %w", d, err)
	}
	return info.Size(), nil
}

// OpenBlob opens a blob linked in repo. The result embeds an *os.File: it is
// an io.Seeker and io.ReaderAt as well, and File unwraps it for sendfile.
func (f *FS) OpenBlob(ctx context.Context, repo Repo, d digest.Digest) (Blob, error) {
	if err := check(ctx, repo, d); err != nil {
		return nil, err
	}
	if err := f.checkLinked(repo, d); err != nil {
		return nil, err
	}
	b, err := f.OpenContent(ctx, d)
	if err == nil {
		// A use; the open file stays readable even if collected now.
		_ = f.touchPath(f.blobPath(d))
	}
	return b, err
}

// PutBlob streams r into the store, verifies it against d and size (-1 for
// unknown) and links it into repo. The blob is never held in memory.
func (f *FS) PutBlob(ctx context.Context, repo Repo, d digest.Digest, size int64, r io.Reader) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	if _, err := f.writeContent(ctx, d, size, r); err != nil {
		return err
	}
	return f.link(repo, d)
}

var _ VerifiedPutter = (*FS)(nil)

// PutVerifiedBlob writes data, which the caller verified against d, like
// PutBlob (temporary file, fsync, rename, link) without hashing it again.
func (f *FS) PutVerifiedBlob(ctx context.Context, repo Repo, d digest.Digest, data []byte) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	if err := f.putContent(d, data); err != nil {
		return err
	}
	return f.link(repo, d)
}

// LinkBlob makes a stored blob visible in repo.
func (f *FS) LinkBlob(ctx context.Context, repo Repo, d digest.Digest) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	err := f.touchPath(f.blobPath(d)) // a mount is a use
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrBlobUnknown, d)
	}
	if err != nil {
		return fmt.Errorf("link blob %s: %w", d, err)
	}
	return f.link(repo, d)
}

// UnlinkBlob removes a blob from repo; the content stays.
func (f *FS) UnlinkBlob(ctx context.Context, repo Repo, d digest.Digest) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	err := os.Remove(f.blobLink(repo, d))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s in %s", ErrBlobUnknown, d, repo)
	}
	if err != nil {
		return fmt.Errorf("unlink blob %s: %w", d, err)
	}
	return nil
}

// link writes repo's link file for d unless it is there already.
func (f *FS) link(repo Repo, d digest.Digest) error {
	path := f.blobLink(repo, d)
	info, err := os.Lstat(path)
	if err == nil && f.touch(path, info.ModTime()) == nil {
		return nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("link blob %s: %w", d, err)
	}
	return f.writeFile(path, []byte(d))
}

// checkLinked returns ErrBlobUnknown unless d is linked in repo.
func (f *FS) checkLinked(repo Repo, d digest.Digest) error {
	ok, err := exists(f.blobLink(repo, d))
	if err != nil {
		return fmt.Errorf("stat blob link %s: %w", d, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s in %s", ErrBlobUnknown, d, repo)
	}
	return nil
}
