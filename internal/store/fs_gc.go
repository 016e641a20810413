package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
)

// DefaultTouchGrain is how stale a last-use time may get before a use
// records itself, unless WithTouchGrain says otherwise.
const DefaultTouchGrain = time.Minute

// WithTouchGrain sets how stale a last-use time (a file's modification
// time) may get before a use (a blob HEAD, GET or mount, a write of
// existing content, a tag) records itself with a utimes call. Garbage
// collection must wait longer than this (its delay) for the uses to
// protect content; 0 records every use.
func WithTouchGrain(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("%w: touch grain %v must not be negative", ErrInvalid, d)
		}
		o.touchGrain = d
		return nil
	}
}

var _ Collector = (*FS)(nil)

// touch records a use of the file at path whose modification time is
// mtime, unless mtime is within the touch grain. A missing file yields an
// error matching fs.ErrNotExist; a use that cannot be recorded otherwise
// (a file of another owner) is not an error: reads must not fail on it.
func (f *FS) touch(path string, mtime time.Time) error {
	now := f.now()
	if now.Sub(mtime) < f.touchGrain && !mtime.After(now) {
		return nil
	}
	if err := os.Chtimes(path, now, now); errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// touchPath is touch for a file whose modification time is not known yet.
func (f *FS) touchPath(path string) error {
	info, err := os.Lstat(path)
	if err != nil {
		return err
	}
	return f.touch(path, info.ModTime())
}

// forceTouch records a use whatever the grain.
func (f *FS) forceTouch(path string) error {
	now := f.now()
	return os.Chtimes(path, now, now)
}

// maxTouched bounds the references touchReferences marks as used.
const maxTouched = 10000

// touchReferences records a use of the stored content a manifest names:
// its config, layers and (for an index) child manifests. Unreadable
// manifests and absent content are ignored.
func (f *FS) touchReferences(data []byte) {
	type desc struct {
		Digest string `json:"digest"`
	}
	var m struct {
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		Manifests []desc `json:"manifests"`
	}
	if json.Unmarshal(data, &m) != nil {
		return
	}
	refs := append(m.Layers, m.Manifests...)
	if m.Config != nil {
		refs = append(refs, *m.Config)
	}
	for i, r := range refs {
		if i == maxTouched {
			return
		}
		if d, err := ref.ParseDigest(r.Digest); err == nil {
			_ = f.touchPath(f.blobPath(d))
		}
	}
}

// CollectBlobs calls fn for each stored content with its size and
// modification time (its last use).
func (f *FS) CollectBlobs(ctx context.Context, fn func(Entry) error) error {
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
		return fn(Entry{Digest: d, Size: info.Size(), LastUsed: info.ModTime()})
	})
}

// CollectManifests calls fn for each manifest linked in repo, its size
// and the later modification time of its link and its content.
func (f *FS) CollectManifests(ctx context.Context, repo Repo, fn func(Entry) error) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	dir := filepath.Join(f.repoDir(repo), "_manifests")
	return walkDigests(ctx, dir, false, func(d digest.Digest, e fs.DirEntry) error {
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stat manifest link %s: %w", d, err)
		}
		ent := Entry{Digest: d, LastUsed: info.ModTime()}
		if c, err := os.Stat(f.blobPath(d)); err == nil {
			ent.Size = c.Size()
			if c.ModTime().After(ent.LastUsed) {
				ent.LastUsed = c.ModTime()
			}
		}
		return fn(ent)
	})
}

// CollectBlobLinks calls fn for each blob link of repo.
func (f *FS) CollectBlobLinks(ctx context.Context, repo Repo, fn func(digest.Digest) error) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	dir := filepath.Join(f.repoDir(repo), "_blobs")
	return walkDigests(ctx, dir, false, func(d digest.Digest, _ fs.DirEntry) error { return fn(d) })
}

// RemoveTag removes tag of repo if it still points at d.
func (f *FS) RemoveTag(ctx context.Context, repo Repo, tag string, d digest.Digest) (bool, error) {
	if err := check(ctx, repo, d); err != nil {
		return false, err
	}
	if err := checkTag(tag); err != nil {
		return false, err
	}
	return f.remove(f.tagPath(repo, tag), func(trashed string) bool {
		var t tagFile
		return readJSON(trashed, &t) == nil && t.Digest == d
	})
}

// RemoveManifest removes repo's link of manifest d, then its referrers
// entry, blob link and pull record, unless the link or the content was
// used at or after cutoff.
func (f *FS) RemoveManifest(ctx context.Context, repo Repo, d digest.Digest, cutoff time.Time) (bool, error) {
	if err := check(ctx, repo, d); err != nil {
		return false, err
	}
	content := f.blobPath(d)
	if used(f.manifestLink(repo, d), cutoff) || used(content, cutoff) {
		return false, nil
	}
	var link manifestLink
	ok, err := f.remove(f.manifestLink(repo, d), func(trashed string) bool {
		if used(trashed, cutoff) || used(content, cutoff) {
			return false
		}
		// Gone from the trash: taken back by a recovery.
		return !errors.Is(readJSON(trashed, &link), fs.ErrNotExist)
	})
	if err != nil || !ok {
		return false, err
	}
	for _, subject := range []digest.Digest{link.Subject, f.subjectOf(d)} {
		if subject != "" {
			if err := removeFile(f.referrerPath(repo, subject, d)); err != nil {
				return true, fmt.Errorf("remove manifest %s: %w", d, err)
			}
		}
	}
	for _, p := range []string{f.blobLink(repo, d), f.pullPath(repo, d)} {
		if err := removeFile(p); err != nil {
			return true, fmt.Errorf("remove manifest %s: %w", d, err)
		}
	}
	return true, nil
}

// RemoveBlobLink removes repo's link of blob d unless the link or the
// content was used at or after cutoff.
func (f *FS) RemoveBlobLink(ctx context.Context, repo Repo, d digest.Digest, cutoff time.Time) (bool, error) {
	if err := check(ctx, repo, d); err != nil {
		return false, err
	}
	content := f.blobPath(d)
	if used(f.blobLink(repo, d), cutoff) || used(content, cutoff) {
		return false, nil
	}
	return f.remove(f.blobLink(repo, d), func(trashed string) bool {
		ok, _ := exists(trashed)
		return ok && !used(trashed, cutoff) && !used(content, cutoff)
	})
}

// RemoveBlob removes the content of d unless it was used at or after
// cutoff, and returns its size.
func (f *FS) RemoveBlob(ctx context.Context, d digest.Digest, cutoff time.Time) (int64, bool, error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	if err := checkDigest(d); err != nil {
		return 0, false, err
	}
	if used(f.blobPath(d), cutoff) {
		return 0, false, nil
	}
	var size int64
	ok, err := f.remove(f.blobPath(d), func(trashed string) bool {
		info, err := os.Stat(trashed)
		if err != nil || !info.ModTime().Before(cutoff) {
			return false
		}
		size = info.Size()
		return true
	})
	return size, ok, err
}

// used reports whether the file at path was modified at or after cutoff;
// a missing file was not.
func used(path string, cutoff time.Time) bool {
	info, err := os.Stat(path)
	return err == nil && !info.ModTime().Before(cutoff)
}

// trashSession returns this store's removal session directory,
// trash/<pid>-<time>, creating it with a held lock on its "lock" file on
// first use: RecoverRemovals leaves the sessions of live processes alone
// and recovers those whose process died (the lock went with it).
func (f *FS) trashSession() (string, error) {
	f.trashMu.Lock()
	defer f.trashMu.Unlock()
	if f.trashDir != "" {
		return f.trashDir, nil
	}
	dir := filepath.Join(f.root, "trash", strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := f.mkdirs(dir); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, f.fileMode)
	if err != nil {
		return "", err
	}
	if ok, err := lockFile(lock); err != nil || !ok {
		_ = lock.Close()
		return "", fmt.Errorf("lock removal session: %v", err)
	}
	f.trashDir, f.trashLock = dir, lock // held for the process's life
	return dir, nil
}

// Steps of a removal, for FS.removeHook.
const (
	removeWritten = "written" // the trash entry names the path; the file is in place
	removeTrashed = "trashed" // the file is in the trash entry, not decided yet
	removeDecided = "decided" // decided to delete; the entry is not deleted yet
)

// hook calls the test hook at step of a removal.
func (f *FS) hook(step string) {
	if f.removeHook != nil {
		f.removeHook(step)
	}
}

// remove takes the file at path out of sight by renaming it into
// trash/<session>/<n>/data (after recording path in .../path), asks
// decide whether it may go after all, then deletes it or puts it back. A
// file that is not there is not removed. A crash leaves the entry for
// RecoverRemovals.
func (f *FS) remove(path string, decide func(trashed string) bool) (bool, error) {
	if ok, err := exists(path); err != nil || !ok {
		return false, err
	}
	rel, err := filepath.Rel(f.root, path)
	if err != nil {
		return false, fmt.Errorf("remove: %w", err)
	}
	session, err := f.trashSession()
	if err != nil {
		return false, fmt.Errorf("remove %s: %w", rel, err)
	}
	dir := filepath.Join(session, strconv.FormatUint(f.trashSeq.Add(1), 36))
	if err := f.mkdirs(dir); err != nil {
		return false, fmt.Errorf("remove %s: %w", rel, err)
	}
	if err := f.writeFile(filepath.Join(dir, "path"), []byte(filepath.ToSlash(rel))); err != nil {
		_ = os.RemoveAll(dir)
		return false, fmt.Errorf("remove %s: %w", rel, err)
	}
	f.hook(removeWritten)
	data := filepath.Join(dir, "data")
	if err := os.Rename(path, data); err != nil {
		_ = os.RemoveAll(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil // removed meanwhile
		}
		return false, fmt.Errorf("remove %s: %w", rel, err)
	}
	f.hook(removeTrashed)
	if !decide(data) {
		if err := f.restore(data, path); err != nil {
			return false, err // the entry stays for RecoverRemovals
		}
		return false, os.RemoveAll(dir)
	}
	f.hook(removeDecided)
	if err := os.RemoveAll(dir); err != nil {
		return true, fmt.Errorf("remove %s: %w", rel, err)
	}
	return true, nil
}

// restore puts the trashed file data back at path, unless a new one was
// written there meanwhile (then data is dropped).
func (f *FS) restore(data, path string) error {
	if ok, err := exists(path); err == nil && ok {
		return removeFile(data)
	}
	if err := f.mkdirs(filepath.Dir(path)); err != nil {
		return err
	}
	// Link, not rename: a writer that created path meanwhile wins.
	err := os.Link(data, path)
	if err != nil && !errors.Is(err, fs.ErrExist) && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restore %s: %w", filepath.Base(path), err)
	}
	return removeFile(data)
}

// RecoverRemovals puts back every item a removal left in trash/ (a crash
// between taking it out of sight and deciding), unless a new copy was
// written meanwhile, and returns how many came back. Sessions of live
// processes (their lock held) are left alone.
func (f *FS) RecoverRemovals(ctx context.Context) (int, error) {
	sessions, err := readDir(filepath.Join(f.root, "trash"))
	if err != nil {
		return 0, fmt.Errorf("recover removals: %w", err)
	}
	n := 0
	for _, s := range sessions {
		dir := filepath.Join(f.root, "trash", s.Name())
		if !s.IsDir() {
			continue
		}
		k, err := f.recoverSession(ctx, dir)
		n += k
		if err != nil {
			return n, fmt.Errorf("recover removals: %w", err)
		}
	}
	return n, nil
}

// recoverSession recovers the entries of one abandoned session directory
// and removes it.
func (f *FS) recoverSession(ctx context.Context, dir string) (int, error) {
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
	if err == nil {
		defer lock.Close()
		if ok, err := lockFile(lock); err != nil || !ok {
			return 0, nil // a live process's session (ours included)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	entries, err := readDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if !e.IsDir() {
			continue
		}
		ed := filepath.Join(dir, e.Name())
		rel, err := os.ReadFile(filepath.Join(ed, "path"))
		data := filepath.Join(ed, "data")
		if err == nil && filepath.IsLocal(filepath.FromSlash(string(rel))) {
			if ok, _ := exists(data); ok {
				if err := f.restore(data, filepath.Join(f.root, filepath.FromSlash(string(rel)))); err != nil {
					return n, err
				}
				n++
			}
		}
		if err := os.RemoveAll(ed); err != nil {
			return n, err
		}
	}
	return n, os.RemoveAll(dir)
}
