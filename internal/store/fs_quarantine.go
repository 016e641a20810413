package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/opencontainers/go-digest"
)

var (
	_ Quarantiner   = (*FS)(nil)
	_ ContentReader = (*FS)(nil)
)

// quarantineLocks serialises quarantines of one blob file within the
// process (keyed by its path, so stores with different roots never wait for
// each other). Quarantine is the only operation that removes files from
// blobs/, so while a blob's key is held its file cannot change: writers
// never replace existing content (see install).
var quarantineLocks keyedLock

// OpenContent opens the stored content of d whichever repositories link it.
// The bytes are not verified; the result is a Blob like OpenBlob's.
func (f *FS) OpenContent(ctx context.Context, d digest.Digest) (Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	file, err := os.Open(f.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrBlobUnknown, d)
	}
	if err != nil {
		return nil, fmt.Errorf("open content %s: %w", d, err)
	}
	info, err := file.Stat()
	if err != nil {
		_ = file.Close()
		return nil, fmt.Errorf("open content %s: %w", d, err)
	}
	return &fileBlob{File: file, size: info.Size()}, nil
}

// Quarantine moves blob d to quarantine/<alg>-<hex>-<unix time> (with a
// "-<n>" suffix if that name is taken) when its bytes do not hash to d, and
// returns the new path. The content is hashed again here, under the blob's
// lock, so intact content is never moved: Quarantine then returns "" and no
// error. Links stay; a link without content reads as unknown, so the next
// fetch through the cache stores the blob afresh.
//
// Should another process replace the file between the hash and the rename,
// the moved file is hashed too and put back if it turns out intact.
func (f *FS) Quarantine(ctx context.Context, d digest.Digest) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := checkDigest(d); err != nil {
		return "", err
	}
	src := f.blobPath(d)
	unlock, err := quarantineLocks.lock(ctx, src)
	if err != nil {
		return "", err
	}
	defer unlock()

	file, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s", ErrBlobUnknown, d)
	}
	if err != nil {
		return "", fmt.Errorf("quarantine blob %s: %w", d, err)
	}
	defer file.Close()
	hashed, err := file.Stat()
	if err != nil {
		return "", fmt.Errorf("quarantine blob %s: %w", d, err)
	}
	if intact, err := hashesTo(ctx, file, d); err != nil || intact {
		return "", err
	}

	dst, err := f.quarantinePath(d)
	if err != nil {
		return "", err
	}
	if err := os.Rename(src, dst); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: %s", ErrBlobUnknown, d) // moved by another process
		}
		return "", fmt.Errorf("quarantine blob %s: %w", d, err)
	}
	if err := syncDir(filepath.Dir(src)); err != nil {
		return dst, err
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return dst, err
	}
	moved, err := os.Stat(dst)
	if err != nil {
		return dst, fmt.Errorf("quarantine blob %s: %w", d, err)
	}
	if !os.SameFile(hashed, moved) {
		return f.restoreIfIntact(ctx, d, dst, src)
	}
	return dst, nil
}

// restoreIfIntact puts the quarantined file dst back at src when it hashes
// to d after all (it replaced the corrupt file after that was hashed). It
// returns "" when the content went back, dst when it stays quarantined.
func (f *FS) restoreIfIntact(ctx context.Context, d digest.Digest, dst, src string) (string, error) {
	file, err := os.Open(dst)
	if err != nil {
		return dst, fmt.Errorf("quarantine blob %s: %w", d, err)
	}
	intact, err := hashesTo(ctx, file, d)
	_ = file.Close()
	if err != nil || !intact {
		return dst, err
	}
	// Link, unlike rename, never replaces what may have been stored since.
	if err := os.Link(dst, src); err != nil && !errors.Is(err, fs.ErrExist) {
		return dst, fmt.Errorf("restore intact blob %s from %s: %w", d, dst, err)
	}
	if err := syncDir(filepath.Dir(src)); err != nil {
		return "", err
	}
	if err := os.Remove(dst); err != nil {
		return "", fmt.Errorf("restore intact blob %s: %w", d, err)
	}
	return "", nil
}

// quarantinePath returns a free name for d in quarantine/, creating the
// directory when needed.
func (f *FS) quarantinePath(d digest.Digest) (string, error) {
	dir := filepath.Join(f.root, "quarantine")
	if err := f.mkdirs(dir); err != nil {
		return "", err
	}
	base := string(d.Algorithm()) + "-" + d.Encoded() + "-" + strconv.FormatInt(f.now().Unix(), 10)
	path := filepath.Join(dir, base)
	for n := 1; ; n++ {
		ok, err := exists(path)
		if err != nil {
			return "", fmt.Errorf("quarantine blob %s: %w", d, err)
		}
		if !ok {
			return path, nil
		}
		path = filepath.Join(dir, base+"-"+strconv.Itoa(n))
	}
}

// hashesTo reports whether r's bytes hash to d, stopping when ctx is done.
func hashesTo(ctx context.Context, r io.Reader, d digest.Digest) (bool, error) {
	h := d.Algorithm().Hash()
	if _, err := io.Copy(h, withContext(ctx, r)); err != nil {
		return false, fmt.Errorf("hash blob %s: %w", d, err)
	}
	return digest.NewDigest(d.Algorithm(), h) == d, nil
}
