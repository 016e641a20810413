// Package store is regwarm's content store: content-addressed blobs,
// manifests, tags, referrers and per-repository links, every write verified
// against its digest and made visible atomically.
//
// FS is the filesystem backend; its documentation describes the on-disk
// layout. Package storetest holds the suite every backend passes.
package store

import (
	"context"
	"io"
	"net/url"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Repo names one repository of one local registry.
type Repo struct {
	Registry string // local registry name, e.g. "hub"
	Name     string // repository path, e.g. "library/alpine"
}

// String returns "registry/name".
func (r Repo) String() string { return r.Registry + "/" + r.Name }

// Blob is an open blob. Readers of the filesystem store are *os.File
// underneath so that io.Copy to a TCP connection uses sendfile.
type Blob interface {
	io.ReadCloser
	// Size is the blob's length in bytes.
	Size() int64
}

// Manifest is a stored manifest with its raw bytes.
type Manifest struct {
	MediaType string
	Digest    digest.Digest
	Data      []byte
	// Source is the connector the manifest came from, "" when pushed.
	Source string
}

// TagInfo is what a tag points at.
type TagInfo struct {
	Digest digest.Digest
	// Source is the connector that provided the tag, "" when pushed.
	Source string
	// Checked is when the tag was last confirmed (pushed or revalidated).
	Checked time.Time
}

// PutManifestOptions carries what PutManifest records beside the bytes.
type PutManifestOptions struct {
	Tag     string              // also point this tag at the manifest
	Source  string              // connector name, "" for a push
	Subject *ocispec.Descriptor // the manifest's subject: index it as a referrer
	// Referrer describes the manifest in its subject's referrers list
	// (mediaType, artifactType, annotations); Digest and Size are filled in.
	Referrer ocispec.Descriptor
}

// ReferrerEntry is m's entry in its subject's referrers list: Referrer
// with m's digest and size, and m's media type unless Referrer has one.
func (o PutManifestOptions) ReferrerEntry(m Manifest) ocispec.Descriptor {
	desc := o.Referrer
	desc.Digest, desc.Size = m.Digest, int64(len(m.Data))
	if desc.MediaType == "" {
		desc.MediaType = m.MediaType
	}
	return desc
}

// UploadStatus reports an upload session's progress.
type UploadStatus struct {
	ID     string
	Repo   Repo
	Offset int64  // bytes received so far
	Owner  string // who started it ("" for anonymous or unknown)
}

// StartUploadOptions describes a new upload session and the caps it must
// stay within.
type StartUploadOptions struct {
	// Owner is the user starting the session, "" for anonymous.
	Owner string
	// MaxPerRepo and MaxPerOwner cap the open (unexpired) sessions of the
	// repository and of Owner; 0 means no cap. Beyond a cap StartUpload
	// fails with ErrTooManyUploads.
	MaxPerRepo, MaxPerOwner int
}

// Reader is the read side of a store. The pull-through cache implements it
// too, so the API serves from either without knowing which.
type Reader interface {
	// StatBlob returns a blob's size if it is visible in repo.
	StatBlob(ctx context.Context, repo Repo, d digest.Digest) (int64, error)
	// OpenBlob opens a blob visible in repo.
	OpenBlob(ctx context.Context, repo Repo, d digest.Digest) (Blob, error)
	// Manifest returns a manifest of repo by digest.
	Manifest(ctx context.Context, repo Repo, d digest.Digest) (Manifest, error)
	// Tag resolves a tag of repo.
	Tag(ctx context.Context, repo Repo, tag string) (TagInfo, error)
	// Tags lists repo's tags in lexical order.
	Tags(ctx context.Context, repo Repo) ([]string, error)
	// Referrers lists the manifests of repo whose subject is d.
	Referrers(ctx context.Context, repo Repo, d digest.Digest) ([]ocispec.Descriptor, error)
}

// Writer is the write side of a store.
type Writer interface {
	// PutBlob stores a blob read from r, verifies it against d, and links
	// it into repo. size is the expected length, or -1 if unknown.
	PutBlob(ctx context.Context, repo Repo, d digest.Digest, size int64, r io.Reader) error
	// LinkBlob makes an existing blob visible in repo (cross-repository mount).
	LinkBlob(ctx context.Context, repo Repo, d digest.Digest) error
	// UnlinkBlob removes a blob from repo; the content stays for others.
	UnlinkBlob(ctx context.Context, repo Repo, d digest.Digest) error
	// PutManifest stores a manifest after verifying its digest.
	PutManifest(ctx context.Context, repo Repo, m Manifest, opts PutManifestOptions) error
	// SetTag points a tag at a manifest already in repo.
	SetTag(ctx context.Context, repo Repo, tag string, info TagInfo) error
	// DeleteTag removes a tag.
	DeleteTag(ctx context.Context, repo Repo, tag string) error
	// DeleteManifest removes a manifest from repo with its tags and its
	// referrers entry.
	DeleteManifest(ctx context.Context, repo Repo, d digest.Digest) error
}

// Uploads manages resumable blob uploads.
type Uploads interface {
	// StartUpload opens a new upload session in repo.
	StartUpload(ctx context.Context, repo Repo, opts StartUploadOptions) (UploadStatus, error)
	// UploadStatus reports a session's progress.
	UploadStatus(ctx context.Context, repo Repo, id string) (UploadStatus, error)
	// AppendUpload appends r to the session. offset must equal the bytes
	// received so far (ErrRangeInvalid otherwise); -1 skips the check.
	AppendUpload(ctx context.Context, repo Repo, id string, offset int64, r io.Reader) (UploadStatus, error)
	// CommitUpload verifies the upload against d, stores it, links it into
	// repo and ends the session.
	CommitUpload(ctx context.Context, repo Repo, id string, d digest.Digest) (int64, error)
	// CancelUpload ends a session and discards its data.
	CancelUpload(ctx context.Context, repo Repo, id string) error
	// ExpireUploads discards the sessions idle (no chunk received) since
	// before cutoff, sessions left by earlier processes included, and
	// returns how many went. A session idle longer than the store's upload
	// expiry (WithUploadExpiry) is unknown to every other method already.
	ExpireUploads(ctx context.Context, cutoff time.Time) (int, error)
}

// Walker enumerates the store without loading it into memory.
type Walker interface {
	// Repositories calls fn for each repository of registry ("" for all),
	// in lexical order.
	Repositories(ctx context.Context, registry string, fn func(Repo) error) error
	// Manifests calls fn for each manifest digest linked in repo.
	Manifests(ctx context.Context, repo Repo, fn func(digest.Digest) error) error
	// Blobs calls fn for each blob in the store (every repository).
	Blobs(ctx context.Context, fn func(d digest.Digest, size int64) error) error
}

// Store is the whole local content store.
type Store interface {
	Reader
	Writer
	Uploads
	Walker
	// HasBlob reports whether the blob exists anywhere in the store.
	HasBlob(ctx context.Context, d digest.Digest) (int64, error)
}

// Spooler is an optional store ability used by the pull-through cache: a
// blob write whose bytes can be read back while they are still arriving,
// so one upstream download streams to every waiting client.
type Spooler interface {
	// Spool starts writing blob d of the given size (-1 if unknown).
	Spool(ctx context.Context, d digest.Digest, size int64) (Spool, error)
}

// Spool is a blob being written. Write appends and hashes; Fill does the
// same with everything r yields until EOF, calling progress after each
// chunk (with its own buffers, so no extra copy); ReadAt reads
// what has been written (concurrently with Write); Verify checks digest and
// size once everything is written; Commit (which verifies if Verify was not
// called) makes the blob durable and links it into repo; Close releases the
// spool and, if it was not committed, discards its bytes. Readers must not
// hand out the final byte before Verify succeeded; they need not wait for
// Commit, whose fsyncs then stay off the response path.
type Spool interface {
	io.Writer
	Fill(r io.Reader, progress func(n int64)) error
	io.ReaderAt
	Verify() error
	Commit(ctx context.Context, repo Repo) error
	Close() error
}

// VerifiedPutter is an optional store ability used by the pull-through
// cache for small blobs it received into memory and already verified: the
// bytes are stored without hashing them a second time.
type VerifiedPutter interface {
	// PutVerifiedBlob stores data as blob d and links it into repo. The
	// caller has checked that data hashes to d.
	PutVerifiedBlob(ctx context.Context, repo Repo, d digest.Digest, data []byte) error
}

// Quarantiner is an optional store ability: move content that failed
// verification aside so it is never served again.
type Quarantiner interface {
	// Quarantine moves blob d out of blobs/ (to
	// quarantine/<alg>-<hex>-<unix time>) if its bytes still do not hash
	// to d; it returns where it went. Content that hashes to d after all is
	// left in place and Quarantine returns "" and no error. A blob that is
	// not stored yields ErrBlobUnknown.
	Quarantine(ctx context.Context, d digest.Digest) (string, error)
}

// ContentReader is an optional store ability used by integrity checks: read
// stored content by digest alone, whichever repositories link it (or none).
type ContentReader interface {
	// OpenContent opens the stored content of d, ErrBlobUnknown if absent.
	// The bytes are not verified.
	OpenContent(ctx context.Context, d digest.Digest) (Blob, error)
}

// PullRecorder is an optional store ability: when clients last pulled each
// manifest, shared by every process on the store. Times are kept to the
// second and only grow: recording an earlier time than the stored one
// changes nothing, so concurrent writers need no coordination.
type PullRecorder interface {
	// RecordPulls records that each manifest of repo in pulls was pulled
	// at the given time.
	RecordPulls(ctx context.Context, repo Repo, pulls map[digest.Digest]time.Time) error
	// LastPulled returns when each manifest of repo was last pulled;
	// manifests never pulled are absent.
	LastPulled(ctx context.Context, repo Repo) (map[digest.Digest]time.Time, error)
}

// Entry is one stored item as garbage collection sees it: content in the
// store, or a repository's link to it.
type Entry struct {
	Digest digest.Digest
	// Size is the content's length; 0 for links.
	Size int64
	// LastUsed is when the item was last written or used: a write, a
	// client's HEAD, GET or mount of a blob, a manifest push referencing it,
	// a tag moved away from a manifest. Uses closer together than the
	// store's touch grain (WithTouchGrain) may not move it.
	LastUsed time.Time
}

// Collector is an optional store ability used by online garbage collection:
// list what is stored with when it was last used, and remove items that
// have stayed unused since a cutoff. Every Remove method makes the item
// invisible first, then checks its last use again and puts it back when it
// was used at or after cutoff meanwhile (it then returns false); an
// interrupted removal is finished or undone by RecoverRemovals. Callers
// remove tags and links before the content they point at.
type Collector interface {
	// CollectBlobs calls fn for each stored content (blobs and manifests).
	CollectBlobs(ctx context.Context, fn func(Entry) error) error
	// CollectManifests calls fn for each manifest linked in repo; LastUsed
	// is the later of the link's and the content's.
	CollectManifests(ctx context.Context, repo Repo, fn func(Entry) error) error
	// CollectBlobLinks calls fn for each blob link of repo (manifests are
	// linked as blobs too). RemoveBlobLink checks the link's last use.
	CollectBlobLinks(ctx context.Context, repo Repo, fn func(digest.Digest) error) error
	// RemoveTag removes tag if it still points at d.
	RemoveTag(ctx context.Context, repo Repo, tag string, d digest.Digest) (bool, error)
	// RemoveManifest removes repo's link of manifest d, its referrers entry,
	// blob link and pull record, unless it was used at or after cutoff.
	RemoveManifest(ctx context.Context, repo Repo, d digest.Digest, cutoff time.Time) (bool, error)
	// RemoveBlobLink removes repo's link of blob d unless the link or the
	// content was used at or after cutoff.
	RemoveBlobLink(ctx context.Context, repo Repo, d digest.Digest, cutoff time.Time) (bool, error)
	// RemoveBlob removes the content of d unless it was used at or after
	// cutoff; it returns the bytes freed.
	RemoveBlob(ctx context.Context, d digest.Digest, cutoff time.Time) (int64, bool, error)
	// RecoverRemovals undoes removals a crash interrupted (the items come
	// back; the next collection decides again) and returns how many.
	RecoverRemovals(ctx context.Context) (int, error)
}

// Presigner is an optional store ability used when blob redirects are on:
// a time-limited URL from which a client reads a blob straight from the
// backend.
type Presigner interface {
	// PresignBlob returns a URL of blob d valid for expiry, when d is
	// linked in repo and its content stored; ErrBlobUnknown otherwise.
	PresignBlob(ctx context.Context, repo Repo, d digest.Digest, expiry time.Duration) (*url.URL, error)
}
