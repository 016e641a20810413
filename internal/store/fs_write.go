package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
)

// writeContent streams r into blobs/ as d: into a temporary file while
// hashing, verified against d (and size unless it is -1), synced, then
// renamed into place. On any error nothing is left behind. It returns the
// number of bytes read.
func (f *FS) writeContent(ctx context.Context, d digest.Digest, size int64, r io.Reader) (int64, error) {
	tmp, err := f.createTemp("blob-")
	if err != nil {
		return 0, err
	}
	n, err := fillVerified(ctx, tmp, d, size, r)
	if err != nil {
		discard(tmp)
		return 0, err
	}
	if err := f.install(tmp.Name(), f.blobPath(d)); err != nil {
		_ = os.Remove(tmp.Name())
		return 0, err
	}
	return n, nil
}

// fillVerified copies r to tmp, checks size and digest, then syncs and
// closes tmp.
func fillVerified(ctx context.Context, tmp *os.File, d digest.Digest, size int64, r io.Reader) (int64, error) {
	h := d.Algorithm().Hash()
	src := withContext(ctx, r)
	if size >= 0 {
		src = io.LimitReader(src, size+1) // one more byte reveals a longer body
	}
	n, err := io.Copy(io.MultiWriter(tmp, h), src)
	if err != nil {
		return 0, fmt.Errorf("write blob %s: %w", d, err)
	}
	if size >= 0 && n != size {
		return 0, fmt.Errorf("%w: blob %s: got %d bytes or more, want %d", ErrSizeMismatch, d, n, size)
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return 0, fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, d)
	}
	if err := tmp.Sync(); err != nil {
		return 0, fmt.Errorf("write blob %s: %w", d, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("write blob %s: %w", d, err)
	}
	return n, nil
}

// install renames the synced file src to dst unless dst already exists, in
// which case src is removed and the existing content kept. Content is
// immutable, so two writers racing to rename store the same bytes.
func (f *FS) install(src, dst string) error {
	dir := filepath.Dir(dst)
	if err := f.mkdirs(dir); err != nil {
		return err
	}
	if info, err := os.Lstat(dst); err == nil {
		// Writing it again is a use: garbage collection keeps it. Gone
		// meanwhile (collected): install ours after all.
		if err := f.touch(dst, info.ModTime()); err == nil {
			return os.Remove(src)
		}
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("install %s: %w", filepath.Base(dst), err)
	}
	return syncDir(dir)
}

// writeTemp writes data to a new synced and closed file in tmp/ and
// returns its name; what names the data in errors. On error nothing is
// left behind.
func (f *FS) writeTemp(prefix, what string, data []byte) (string, error) {
	tmp, err := f.createTemp(prefix)
	if err != nil {
		return "", err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		err = tmp.Close()
	}
	if err != nil {
		discard(tmp)
		return "", fmt.Errorf("write %s: %w", what, err)
	}
	return tmp.Name(), nil
}

// putContent stores data, whose digest d the caller checked, in blobs/
// unless it is there already.
func (f *FS) putContent(d digest.Digest, data []byte) error {
	if info, err := os.Lstat(f.blobPath(d)); err == nil && f.touch(f.blobPath(d), info.ModTime()) == nil {
		return nil
	}
	name, err := f.writeTemp("blob-", "blob "+d.String(), data)
	if err != nil {
		return err
	}
	if err := f.install(name, f.blobPath(d)); err != nil {
		_ = os.Remove(name)
		return err
	}
	return nil
}

// writeFile replaces dst with data atomically: temporary file, sync,
// rename, sync of the directory.
func (f *FS) writeFile(dst string, data []byte) error {
	name, err := f.writeTemp("meta-", filepath.Base(dst), data)
	if err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	if err := f.mkdirs(dir); err != nil {
		_ = os.Remove(name)
		return err
	}
	if err := os.Rename(name, dst); err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("write %s: %w", filepath.Base(dst), err)
	}
	return syncDir(dir)
}

// writeJSON replaces dst with the JSON encoding of v atomically.
func (f *FS) writeJSON(dst string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(dst), err)
	}
	return f.writeFile(dst, data)
}

// readJSON decodes the file at path into v. A missing file yields an error
// matching fs.ErrNotExist.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", filepath.Base(path), err)
	}
	return nil
}

// createTemp creates a file in tmp/, on the same filesystem as its
// destination so that rename is atomic.
func (f *FS) createTemp(prefix string) (*os.File, error) {
	tmp, err := os.CreateTemp(filepath.Join(f.root, "tmp"), prefix+"*")
	if err != nil {
		return nil, fmt.Errorf("create temporary file: %w", err)
	}
	if err := tmp.Chmod(f.fileMode); err != nil {
		discard(tmp)
		return nil, fmt.Errorf("create temporary file: %w", err)
	}
	return tmp, nil
}

// discard closes and removes a temporary file after a failed write.
func discard(tmp *os.File) {
	_ = tmp.Close()
	_ = os.Remove(tmp.Name())
}

// exists reports whether path exists; errors other than "not found" are
// returned.
func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// removeFile removes path; a missing file is not an error.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// mkdirs creates dir and its missing parents with the store's directory
// mode, syncing each parent so the new entries survive a crash.
func (f *FS) mkdirs(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := f.mkdirs(parent); err != nil {
			return err
		}
	}
	err := os.Mkdir(dir, f.dirMode)
	if errors.Is(err, fs.ErrExist) {
		return nil // another writer created it
	}
	if err == nil {
		err = f.fixMode(dir)
	}
	if err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	return syncDir(parent)
}

// fixMode gives a new directory exactly the store's mode, which Mkdir's
// umask may have narrowed (this matters for a group-readable store), and
// keeps the setgid bit it inherited so the group propagates.
func (f *FS) fixMode(dir string) error {
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() == f.dirMode {
		return err
	}
	return os.Chmod(dir, f.dirMode|st.Mode()&fs.ModeSetgid)
}

// syncDir flushes a directory's entries (a rename or a new file) to disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// readerFunc adapts a function to io.Reader.
type readerFunc func(p []byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// withContext returns a reader that fails with ctx's error once ctx is
// done, so long copies stop on cancellation.
func withContext(ctx context.Context, r io.Reader) io.Reader {
	return readerFunc(func(p []byte) (int, error) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		return r.Read(p)
	})
}

// keyedLock serialises work per key (an upload id) within the process.
// Waiting honours the caller's context. mu is held only briefly and never
// while waiting for a key.
type keyedLock struct {
	mu   sync.Mutex
	keys map[string]*keyEntry
}

type keyEntry struct {
	held chan struct{} // one slot: full while the key is locked
	refs int           // holders and waiters; the entry goes at zero
}

// lock acquires key and returns the function that releases it.
func (k *keyedLock) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.keys == nil {
		k.keys = make(map[string]*keyEntry)
	}
	e := k.keys[key]
	if e == nil {
		e = &keyEntry{held: make(chan struct{}, 1)}
		k.keys[key] = e
	}
	e.refs++
	k.mu.Unlock()

	select {
	case e.held <- struct{}{}:
		return func() {
			<-e.held
			k.release(key, e)
		}, nil
	case <-ctx.Done():
		k.release(key, e)
		return nil, ctx.Err()
	}
}

// tryLock acquires key if nobody holds it.
func (k *keyedLock) tryLock(key string) (unlock func(), ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys[key] != nil {
		return nil, false
	}
	if k.keys == nil {
		k.keys = make(map[string]*keyEntry)
	}
	e := &keyEntry{held: make(chan struct{}, 1), refs: 1}
	e.held <- struct{}{}
	k.keys[key] = e
	return func() {
		<-e.held
		k.release(key, e)
	}, true
}

func (k *keyedLock) release(key string, e *keyEntry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(k.keys, key)
	}
}
