package store

import (
	"context"
	_ "crypto/sha512" // registers digest.SHA512
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
)

// FS is the filesystem backend of Store. Everything lives under one root
// directory:
//
//	blobs/<alg>/<first 2 hex>/<hex>   content of blobs and manifests
//	tmp/                              temporary files of atomic writes
//	quarantine/<alg>-<hex>-<unix>     content that failed verification
//	trash/<pid>-<t>/lock              a removal session of garbage collection,
//	                                  locked (flock) while its process lives
//	trash/<pid>-<t>/<n>/{path,data}   an item being removed: its path below
//	                                  the root, and the item
//	uploads/<id>/data                 bytes received by an upload session
//	uploads/<id>/info.json            its repository, owner, start and last
//	                                  chunk times, offset and marshalled
//	                                  sha256 state
//	registries/<registry>/repos/<name>/
//	    _blobs/<alg>/<hex>            blob link (the digest)
//	    _manifests/<alg>/<hex>        manifest link (JSON: mediaType, size,
//	                                  source, subject, time)
//	    _tags/<tag>                   tag (JSON: digest, source, checked)
//	    _referrers/<alg>/<subject hex>/<alg>-<hex>
//	                                  referrer descriptor (JSON)
//	    _pulls/<alg>/<hex>            Unix time of the manifest's last client pull
//
// Content is streamed into tmp/ while it is hashed, verified, synced and
// renamed into place, so a crash never leaves a visible partial blob; an
// existing blob is kept when another writer stored it first. Link and
// metadata files are written the same way. Components of valid repository
// names never start with "_", so the "_blobs" style directories cannot
// collide with a repository path.
//
// A blob is visible in a repository only when linked there (PutBlob,
// CommitUpload, LinkBlob, or PutManifest of that digest); HasBlob ignores
// links. Every entry point validates registry, repository, tag and digest
// and rejects bad input with an error wrapping ErrInvalid.
//
// An upload session idle (no chunk) longer than WithUploadExpiry is
// unknown to every method and removed by ExpireUploads; StartUpload
// enforces the caps of StartUploadOptions.
//
// Upload sessions are serialised per id within a process. Across processes
// the last writer of info.json wins; a chunk whose info.json update was lost
// is simply truncated away by the next append.
//
// Directories are never removed once created (except upload sessions), so
// concurrent writers never race with a cleanup.
//
// Files are created 0600 and directories 0700 whatever the umask: private
// registries' layers are readable by regwarm's user only. WithGroupReadable
// makes them 0640 and 0750 instead, for a group that must read the store
// (a backup agent); give the root that group and the setgid bit (chgrp
// backup root && chmod g+s root) so new entries inherit it. Entries created
// by older versions keep their modes and work as before.
type FS struct {
	root     string
	now      func() time.Time
	uploads  keyedLock
	pulls    keyedLock // serialises RecordPulls per repository in this process
	fileMode fs.FileMode
	dirMode  fs.FileMode
	// uploadExpiry is how long a session may stay idle (0: forever).
	uploadExpiry time.Duration
	// touchGrain is how stale a last-use time may get before a use
	// records itself (fs_gc.go).
	touchGrain time.Duration
	// trashSeq numbers removals in progress; trashDir is this store's
	// removal session, trashLock its held lock file (fs_gc.go).
	trashSeq  atomic.Uint64
	trashMu   sync.Mutex
	trashDir  string
	trashLock *os.File
	// removeHook, nil outside tests, is called at each step of a
	// removal (removeWritten, removeTrashed, removeDecided) to crash
	// there.
	removeHook func(step string)
	// startMu makes counting sessions and starting one atomic within the
	// process.
	startMu sync.Mutex
	// sessions caches the info of open upload sessions (without hash
	// state) for the caps; sessMu guards it. Lock order: startMu, then an
	// upload id's lock, then sessMu.
	sessMu   sync.Mutex
	sessions map[string]uploadInfo
}

// Modes of what the store creates: private by default, group-readable
// with WithGroupReadable.
const (
	privateFileMode fs.FileMode = 0o600
	privateDirMode  fs.FileMode = 0o700
	groupFileMode   fs.FileMode = 0o640
	groupDirMode    fs.FileMode = 0o750
)

var _ Store = (*FS)(nil)

// Option configures a store backend.
type Option func(*options) error

type options struct {
	now           func() time.Time
	tmpMaxAge     time.Duration
	groupReadable bool
	uploadExpiry  time.Duration
	touchGrain    time.Duration
	metaTTL       time.Duration // S3 only
	metaTTLSet    bool
}

// WithMetadataTTL sets how long the S3 store trusts the tags and manifest
// links it read (0: read the bucket on every request). Writes through the
// same store are seen at once; other processes' writes within d. The
// default is one second; the filesystem store ignores it.
func WithMetadataTTL(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("%w: metadata TTL %v must not be negative", ErrInvalid, d)
		}
		o.metaTTL, o.metaTTLSet = d, true
		return nil
	}
}

// WithUploadExpiry makes upload sessions idle (no chunk received) for d
// unknown; ExpireUploads removes them. The default, 0, keeps them forever.
func WithUploadExpiry(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("%w: upload expiry %v must not be negative", ErrInvalid, d)
		}
		o.uploadExpiry = d
		return nil
	}
}

// WithGroupReadable makes new files 0640 and directories 0750 instead of
// 0600 and 0700.
func WithGroupReadable(on bool) Option {
	return func(o *options) error {
		o.groupReadable = on
		return nil
	}
}

// WithClock sets the clock that stamps manifest links, tags and uploads.
func WithClock(now func() time.Time) Option {
	return func(o *options) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrInvalid)
		}
		o.now = now
		return nil
	}
}

// WithTempMaxAge sets the age after which NewFS removes leftover temporary
// files of interrupted writes. The default is one hour.
func WithTempMaxAge(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: temp max age %v must be positive", ErrInvalid, d)
		}
		o.tmpMaxAge = d
		return nil
	}
}

// NewFS opens the filesystem store at root, creating its directories and
// removing stale temporary files.
func NewFS(root string, opts ...Option) (*FS, error) {
	if root == "" {
		return nil, fmt.Errorf("%w: empty store root", ErrInvalid)
	}
	o := options{now: time.Now, tmpMaxAge: time.Hour, touchGrain: DefaultTouchGrain}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	root = filepath.Clean(root)
	f := &FS{root: root, now: o.now, fileMode: privateFileMode, dirMode: privateDirMode, uploadExpiry: o.uploadExpiry, touchGrain: o.touchGrain}
	if o.groupReadable {
		f.fileMode, f.dirMode = groupFileMode, groupDirMode
	}
	for _, dir := range []string{"blobs", "tmp", "uploads", "registries"} {
		if err := f.mkdirs(filepath.Join(root, dir)); err != nil {
			return nil, fmt.Errorf("create store directory: %w", err)
		}
	}
	if err := f.cleanTmp(o.now().Add(-o.tmpMaxAge)); err != nil {
		return nil, err
	}
	return f, nil
}

// cleanTmp removes temporary files last modified before cutoff: leftovers
// of writes interrupted by a crash. They were never visible.
func (f *FS) cleanTmp(cutoff time.Time) error {
	dir := filepath.Join(f.root, "tmp")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("clean temporary files: %w", err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.ModTime().Before(cutoff) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clean temporary files: %w", err)
		}
	}
	return nil
}

// HasBlob reports the size of a blob stored anywhere, ignoring links.
func (f *FS) HasBlob(ctx context.Context, d digest.Digest) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkDigest(d); err != nil {
		return 0, err
	}
	info, err := os.Stat(f.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s", ErrBlobUnknown, d)
	}
	if err != nil {
		return 0, fmt.Errorf("stat blob %s: %w", d, err)
	}
	return info.Size(), nil
}

// fileBlob is the Blob returned by FS.OpenBlob. It embeds the *os.File, so
// it is also an io.Seeker and io.ReaderAt (for Range requests); File
// unwraps it for sendfile.
type fileBlob struct {
	*os.File
	size int64
}

// Size returns the blob's length in bytes.
func (b *fileBlob) Size() int64 { return b.size }

// File returns the *os.File under a Blob opened by FS. The HTTP layer hands
// the file itself to io.Copy (inside an io.LimitedReader) so that copying
// to a TCP connection uses sendfile; a wrapper type would hide the file.
// ok is false for blobs of other backends.
func File(b Blob) (*os.File, bool) {
	fb, ok := b.(*fileBlob)
	if !ok {
		return nil, false
	}
	return fb.File, true
}

// check validates what most methods share: the context, the repository and
// any digests.
func check(ctx context.Context, repo Repo, ds ...digest.Digest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkRepo(repo); err != nil {
		return err
	}
	for _, d := range ds {
		if err := checkDigest(d); err != nil {
			return err
		}
	}
	return nil
}

func checkRepo(repo Repo) error {
	if err := ref.ValidRegistry(repo.Registry); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := ref.ValidName(repo.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func checkDigest(d digest.Digest) error {
	if _, err := ref.ParseDigest(string(d)); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func checkTag(tag string) error {
	if err := ref.ValidTag(tag); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// Paths. Callers validate every argument first.

func (f *FS) blobPath(d digest.Digest) string {
	hex := d.Encoded()
	return filepath.Join(f.root, "blobs", string(d.Algorithm()), hex[:2], hex)
}

func (f *FS) repoDir(repo Repo) string {
	return filepath.Join(f.root, "registries", repo.Registry, "repos", filepath.FromSlash(repo.Name))
}

func (f *FS) blobLink(repo Repo, d digest.Digest) string {
	return filepath.Join(f.repoDir(repo), "_blobs", string(d.Algorithm()), d.Encoded())
}

func (f *FS) manifestLink(repo Repo, d digest.Digest) string {
	return filepath.Join(f.repoDir(repo), "_manifests", string(d.Algorithm()), d.Encoded())
}

func (f *FS) tagPath(repo Repo, tag string) string {
	return filepath.Join(f.repoDir(repo), "_tags", tag)
}

func (f *FS) referrerPath(repo Repo, subject, d digest.Digest) string {
	return filepath.Join(f.referrerDir(repo, subject), string(d.Algorithm())+"-"+d.Encoded())
}

func (f *FS) referrerDir(repo Repo, subject digest.Digest) string {
	return filepath.Join(f.repoDir(repo), "_referrers", string(subject.Algorithm()), subject.Encoded())
}

func (f *FS) uploadDir(id string) string {
	return filepath.Join(f.root, "uploads", id)
}

// repoMarkers are the directories whose presence makes a directory under
// registries/<registry>/repos a repository.
var repoMarkers = []string{"_manifests", "_blobs", "_tags"}

func isRepoDir(dir string) bool {
	for _, m := range repoMarkers {
		if _, err := os.Lstat(filepath.Join(dir, m)); err == nil {
			return true
		}
	}
	return false
}
