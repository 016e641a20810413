package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"
)

// S3 is the S3 backend of Store: the whole store in one bucket, shared by
// any number of processes on any number of hosts. Object keys, below the
// configured prefix:
//
//	blobs/<alg>/<hex>                       content of blobs and manifests
//	quarantine/<alg>-<hex>-<unix>           content that failed verification
//	uploads/<id>/info.json                  an upload session (as on FS)
//	uploads/<id>/<offset, 16 hex digits>    its chunks, one object each
//	repos/<registry>/<name>/
//	    _blobs/<alg>/<hex>                  blob link (the digest)
//	    _manifests/<alg>/<hex>              manifest link (JSON, as on FS)
//	    _tags/<tag>                         tag (JSON)
//	    _referrers/<alg>/<subject hex>/<alg>-<hex>
//	                                        referrer descriptor (JSON)
//	    _pulls/<alg>/<hex>                  Unix time of the last client pull
//	used/<key>                              use marker of <key> (s3_gc.go)
//	trash/<key>                             a removal of <key> under way (s3_gc.go)
//
// No key is the "directory" of another: every object's last segments are
// one of the fixed layouts above, and the components of repository names
// never start with "_" (internal/ref), so a repository path never meets a
// "_blobs"-style segment. Some S3-compatible servers (versitygw's posix
// backend) refuse keys "a/b" and "a/b/c" side by side; this layout never
// asks for that.
//
// Writes are verified before they become visible: content is received into
// a temporary file in the local directory (under data_dir) while it is
// hashed, and PUT to its final key only once its digest and size matched. A
// single S3 PUT, and a multipart upload's completion, are atomic: a process
// killed mid-write leaves no object, at most an incomplete multipart upload
// that is invisible to readers and aborted by the next NewS3 once it is a
// day old. Content is immutable, so a second writer of a blob that exists
// skips the PUT.
//
// Upload sessions live in the bucket, so a chunked upload started by one
// process can be continued and finished by another. Each chunk is verified
// locally (hash state), then PUT as its own object; CommitUpload streams the
// chunks through a hash into a local temporary file, and PUTs the blob only
// when it matches. Within a process an upload is serialised per id; across
// processes the last writer of info.json wins, as on FS.
//
// Consistency: S3 (AWS since December 2020, and the S3-compatible servers
// regwarm is tested with) is strongly read-after-write consistent for
// objects and listings. Each process caches manifest content by digest
// (immutable) and, for WithMetadataTTL (default one second), the tags,
// manifest links and blob links (that they exist) it read. Its own writes
// and deletes drop those entries, so a process always sees what it wrote;
// a tag moved, a manifest deleted or a blob unlinked by another process is
// seen within the TTL. A blob HEAD or GET that records a use reads the
// link again (s3_gc.go), so garbage collection in another process never
// leaves a removed link trusted. Upload sessions, referrers and listings are never
// cached.
type S3 struct {
	client *minio.Client
	core   minio.Core
	bucket string
	prefix string
	local  string // directory of temporary files

	now          func() time.Time
	uploadExpiry time.Duration
	uploads      keyedLock
	pulls        keyedLock
	startMu      sync.Mutex
	sessMu       sync.Mutex
	sessions     map[string]uploadInfo
	manifests    contentCache
	meta         metaCache
	// touchGrain and uses: see s3_gc.go.
	touchGrain time.Duration
	uses       useCache
}

var (
	_ Store          = (*S3)(nil)
	_ Spooler        = (*S3)(nil)
	_ VerifiedPutter = (*S3)(nil)
	_ ContentReader  = (*S3)(nil)
	_ Quarantiner    = (*S3)(nil)
	_ PullRecorder   = (*S3)(nil)
	_ Collector      = (*S3)(nil)
)

// S3Options locates the bucket and says how to reach it.
type S3Options struct {
	Bucket string
	// Prefix is prepended to every key; "a/b" and "a/b/" mean the same.
	Prefix string
	Region string
	// Endpoint is the URL of an S3-compatible server, http(s)://host:port;
	// empty means AWS.
	Endpoint string
	// PathStyle addresses the bucket in the path instead of the host name.
	PathStyle bool
	// AccessKeyID and SecretAccessKey are static credentials; when both are
	// empty the AWS default chain is used (environment, shared files,
	// instance roles).
	AccessKeyID     string
	SecretAccessKey string
	// LocalDir holds temporary files (spools, verified writes) of this
	// process; it is created when missing.
	LocalDir string
	// Transport overrides the HTTP transport (tests); nil uses a default
	// one that verifies TLS.
	Transport http.RoundTripper
}

// NewS3 opens the store in an existing bucket. It checks that the bucket
// exists, removes stale local temporary files and aborts day-old
// incomplete multipart uploads under the prefix.
func NewS3(ctx context.Context, o S3Options, opts ...Option) (*S3, error) {
	op := options{now: time.Now, tmpMaxAge: time.Hour, touchGrain: DefaultTouchGrain}
	for _, opt := range opts {
		if err := opt(&op); err != nil {
			return nil, err
		}
	}
	if o.Bucket == "" {
		return nil, fmt.Errorf("%w: s3: empty bucket", ErrInvalid)
	}
	if o.LocalDir == "" {
		return nil, fmt.Errorf("%w: s3: empty local directory", ErrInvalid)
	}
	if (o.AccessKeyID == "") != (o.SecretAccessKey == "") {
		return nil, fmt.Errorf("%w: s3: access key id and secret access key go together", ErrInvalid)
	}
	host, secure, err := s3Endpoint(o.Endpoint)
	if err != nil {
		return nil, err
	}
	var creds *credentials.Credentials
	if o.AccessKeyID != "" {
		creds = credentials.NewStaticV4(o.AccessKeyID, o.SecretAccessKey, "")
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.FileAWSCredentials{},
			&credentials.IAM{},
		})
	}
	tr := o.Transport
	if tr == nil {
		t, err := minio.DefaultTransport(secure)
		if err != nil {
			return nil, fmt.Errorf("s3 transport: %w", err)
		}
		t.MaxIdleConnsPerHost = 64
		tr = t
	}
	lookup := minio.BucketLookupDNS
	if o.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(host, &minio.Options{
		Creds: creds, Secure: secure, Region: o.Region, BucketLookup: lookup, Transport: tr,
		// A few retries ride out a blip; more would hold every request
		// for seconds while S3 is down (it then fails as unavailable).
		MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: s3 client: %w", ErrInvalid, err)
	}
	prefix := strings.Trim(o.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	s := &S3{
		client: client, core: minio.Core{Client: client}, bucket: o.Bucket, prefix: prefix,
		local: filepath.Clean(o.LocalDir), now: op.now, uploadExpiry: op.uploadExpiry,
		manifests:  contentCache{max: manifestCacheBytes},
		meta:       metaCache{ttl: time.Second, max: metaCacheEntries},
		touchGrain: op.touchGrain, uses: useCache{max: useCacheEntries},
	}
	if op.metaTTLSet {
		s.meta.ttl = op.metaTTL
	}
	if err := os.MkdirAll(s.local, 0o700); err != nil {
		return nil, fmt.Errorf("s3 local directory: %w", err)
	}
	if err := cleanTmpDir(s.local, op.now().Add(-op.tmpMaxAge)); err != nil {
		return nil, err
	}
	ok, err := client.BucketExists(ctx, o.Bucket)
	if err != nil {
		return nil, s3Err("check bucket "+o.Bucket, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: s3 bucket %q does not exist", ErrInvalid, o.Bucket)
	}
	s.abortStaleMultipart(ctx, op.now().Add(-24*time.Hour))
	return s, nil
}

// s3Endpoint splits an endpoint URL into host[:port] and whether it uses
// TLS; "" is AWS.
func s3Endpoint(endpoint string) (string, bool, error) {
	if endpoint == "" {
		return "s3.amazonaws.com", true, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
		return "", false, fmt.Errorf("%w: s3 endpoint must be http(s)://host[:port]", ErrInvalid)
	}
	return u.Host, u.Scheme == "https", nil
}

// abortStaleMultipart aborts the incomplete multipart uploads under the
// prefix started before cutoff: leftovers of processes killed mid-PUT.
// They were never visible; this frees their space. Best effort.
func (s *S3) abortStaleMultipart(ctx context.Context, cutoff time.Time) {
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, s.prefix, true) {
		if u.Err != nil {
			return
		}
		if u.Initiated.Before(cutoff) {
			_ = s.core.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID)
		}
	}
}

// cleanTmpDir removes the files of dir last modified before cutoff.
func cleanTmpDir(dir string, cutoff time.Time) error {
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

// Keys. Callers validate every argument first.

func (s *S3) blobKey(d digest.Digest) string {
	return s.prefix + "blobs/" + string(d.Algorithm()) + "/" + d.Encoded()
}

func (s *S3) repoKey(repo Repo) string {
	return s.prefix + "repos/" + repo.Registry + "/" + repo.Name + "/"
}

func (s *S3) blobLinkKey(repo Repo, d digest.Digest) string {
	return s.repoKey(repo) + "_blobs/" + string(d.Algorithm()) + "/" + d.Encoded()
}

func (s *S3) manifestLinkKey(repo Repo, d digest.Digest) string {
	return s.repoKey(repo) + "_manifests/" + string(d.Algorithm()) + "/" + d.Encoded()
}

func (s *S3) tagKey(repo Repo, tag string) string { return s.repoKey(repo) + "_tags/" + tag }

func (s *S3) referrerDirKey(repo Repo, subject digest.Digest) string {
	return s.repoKey(repo) + "_referrers/" + string(subject.Algorithm()) + "/" + subject.Encoded() + "/"
}

func (s *S3) referrerKey(repo Repo, subject, d digest.Digest) string {
	return s.referrerDirKey(repo, subject) + string(d.Algorithm()) + "-" + d.Encoded()
}

func (s *S3) pullKey(repo Repo, d digest.Digest) string {
	return s.repoKey(repo) + "_pulls/" + string(d.Algorithm()) + "/" + d.Encoded()
}

func (s *S3) uploadKey(id string) string { return s.prefix + "uploads/" + id + "/" }

// Object access.

// errNoObject is a missing object; methods turn it into their own kind.
var errNoObject = errors.New("no such object")

// s3Err wraps an S3 failure: a missing object becomes errNoObject, a
// canceled context stays itself, anything else is ErrUnavailable.
func s3Err(what string, err error) error {
	if err == nil {
		return nil
	}
	if isNoObject(err) {
		return fmt.Errorf("%s: %w", what, errNoObject)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, err)
}

func isNoObject(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.Code == minio.NoSuchKey || r.StatusCode == http.StatusNotFound && r.Code != minio.NoSuchBucket
}

// maxSmallObject bounds what getSmall reads: metadata and manifests.
const maxSmallObject = 16 << 20

// getSmall reads a small object whole.
func (s *S3) getSmall(ctx context.Context, key string) ([]byte, error) {
	rc, _, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s3Err("get "+s.short(key), err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxSmallObject+1))
	if err != nil {
		return nil, s3Err("get "+s.short(key), err)
	}
	if len(data) > maxSmallObject {
		return nil, fmt.Errorf("get %s: larger than %d bytes", s.short(key), maxSmallObject)
	}
	return data, nil
}

// putSmall writes a small object.
func (s *S3) putSmall(ctx context.Context, key string, data []byte) error {
	_, err := s.client.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", UserMetadata: s.timeMeta()})
	s.meta.drop(key) // after the write: a read racing with it may cache the old value, for the TTL at most
	return s3Err("put "+s.short(key), err)
}

// cacheable reports whether key is a tag, a manifest link or a blob link,
// which the metadata cache keeps (blob links only as "exists").
func (s *S3) cacheable(key string) bool {
	k := s.short(key)
	return strings.Contains(k, "/_tags/") || strings.Contains(k, "/_manifests/") || strings.Contains(k, "/_blobs/")
}

// linked reports whether the link object key exists, trusting a positive
// answer read at or after since for the metadata TTL.
func (s *S3) linked(ctx context.Context, key string, since time.Time) (bool, error) {
	if _, ok := s.meta.getSince(key, since); ok {
		return true, nil
	}
	start := time.Now()
	ok, err := s.exists(ctx, key)
	if ok {
		s.meta.put(key, nil, start)
	}
	return ok, err
}

// stat returns an object's size; errNoObject if it is missing.
func (s *S3) stat(ctx context.Context, key string) (int64, error) {
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return 0, s3Err("stat "+s.short(key), err)
	}
	return info.Size, nil
}

// exists reports whether an object exists.
func (s *S3) exists(ctx context.Context, key string) (bool, error) {
	_, err := s.stat(ctx, key)
	if errors.Is(err, errNoObject) {
		return false, nil
	}
	return err == nil, err
}

// remove deletes an object; a missing one is not an error.
func (s *S3) remove(ctx context.Context, key string) error {
	err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	s.meta.drop(key)
	if isNoObject(err) {
		return nil
	}
	return s3Err("remove "+s.short(key), err)
}

// list calls fn for each object (and, unless recursive, each common prefix,
// whose key ends in "/") under prefix, in key order.
func (s *S3) list(ctx context.Context, prefix string, recursive bool, fn func(minio.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn returns early
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: recursive}) {
		if obj.Err != nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			return s3Err("list "+s.short(prefix), obj.Err)
		}
		if err := fn(obj); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// short is key without the store's prefix, for messages.
func (s *S3) short(key string) string { return strings.TrimPrefix(key, s.prefix) }

// createTemp creates a temporary file in the local directory.
func (s *S3) createTemp(prefix string) (*os.File, error) {
	f, err := os.CreateTemp(s.local, prefix+"*")
	if err != nil {
		return nil, fmt.Errorf("create temporary file: %w", err)
	}
	return f, nil
}

// contentCache keeps immutable content (manifests) by digest, up to max
// bytes; when full it drops arbitrary entries.
type contentCache struct {
	mu    sync.Mutex
	max   int
	bytes int
	m     map[digest.Digest][]byte
}

// manifestCacheBytes is how much manifest content each process keeps.
const manifestCacheBytes = 32 << 20

func (c *contentCache) get(d digest.Digest) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[d]
	return b, ok
}

func (c *contentCache) add(d digest.Digest, b []byte) {
	if len(b) > c.max/16 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[digest.Digest][]byte{}
	}
	if _, ok := c.m[d]; ok {
		return
	}
	for k, v := range c.m {
		if c.bytes+len(b) <= c.max {
			break
		}
		delete(c.m, k)
		c.bytes -= len(v)
	}
	c.m[d] = b
	c.bytes += len(b)
}

func (c *contentCache) drop(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.m[d]; ok {
		delete(c.m, d)
		c.bytes -= len(b)
	}
}

// metaCache keeps small objects (tags, manifest links) for ttl, up to max
// entries; when full it drops arbitrary ones.
type metaCache struct {
	mu  sync.Mutex
	ttl time.Duration
	max int
	m   map[string]metaEntry
}

type metaEntry struct {
	data []byte
	at   time.Time
}

// metaCacheEntries bounds the metadata cache.
const metaCacheEntries = 50_000

func (c *metaCache) get(key string) ([]byte, bool) {
	return c.getSince(key, time.Time{})
}

// getSince is get for an entry read at or after since.
func (c *metaCache) getSince(key string, since time.Time) ([]byte, bool) {
	if c.ttl <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || time.Since(e.at) >= c.ttl || e.at.Before(since) {
		return nil, false
	}
	return e.data, true
}

func (c *metaCache) put(key string, data []byte, at time.Time) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]metaEntry{}
	}
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			if len(c.m) < c.max/2 {
				break
			}
		}
	}
	c.m[key] = metaEntry{data: data, at: at}
}

func (c *metaCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
}
