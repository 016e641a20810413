package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"
)

// HasBlob reports the size of a blob stored anywhere, ignoring links.
func (s *S3) HasBlob(ctx context.Context, d digest.Digest) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkDigest(d); err != nil {
		return 0, err
	}
	size, err := s.stat(ctx, s.blobKey(d))
	if errors.Is(err, errNoObject) {
		return 0, fmt.Errorf("%w: %s", ErrBlobUnknown, d)
	}
	return size, err
}

// StatBlob returns the size of a blob linked in repo.
func (s *S3) StatBlob(ctx context.Context, repo Repo, d digest.Digest) (int64, error) {
	if err := check(ctx, repo, d); err != nil {
		return 0, err
	}
	info, err := s.useBlob(ctx, repo, d, true)
	return info.Size, err
}

// useBlob checks that d is linked in repo and stored, recording a use of
// the content (a client's HEAD or GET: it may push a manifest referencing
// it next, so garbage collection keeps it). The link is read again after
// a use recorded now, so a link removed by another process is never
// trusted from the metadata cache.
func (s *S3) useBlob(ctx context.Context, repo Repo, d digest.Digest, stat bool) (minio.ObjectInfo, error) {
	if err := s.checkLinked(ctx, repo, d, time.Time{}); err != nil {
		return minio.ObjectInfo{}, err
	}
	info, since, err := s.useContent(ctx, s.blobKey(d), stat)
	if errors.Is(err, errNoObject) {
		return info, fmt.Errorf("%w: %s in %s: content missing", ErrBlobUnknown, d, repo)
	}
	if err != nil {
		return info, fmt.Errorf("stat blob %s: %w", d, err)
	}
	return info, s.checkLinked(ctx, repo, d, since)
}

// OpenBlob opens a blob linked in repo. The result streams from S3 and is
// an io.Seeker: a seek before or between reads starts a ranged GET.
func (s *S3) OpenBlob(ctx context.Context, repo Repo, d digest.Digest) (Blob, error) {
	if err := check(ctx, repo, d); err != nil {
		return nil, err
	}
	if _, err := s.useBlob(ctx, repo, d, false); err != nil {
		return nil, err
	}
	return s.OpenContent(ctx, d) // after the use: a GET that finds the content gone says so
}

// OpenContent opens the stored content of d whichever repositories link it.
// The bytes are not verified.
func (s *S3) OpenContent(ctx context.Context, d digest.Digest) (Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	key := s.blobKey(d)
	rc, info, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		err = s3Err("open content "+d.String(), err)
		if errors.Is(err, errNoObject) {
			return nil, fmt.Errorf("%w: %s", ErrBlobUnknown, d)
		}
		return nil, err
	}
	return &s3Blob{ctx: ctx, s: s, key: key, size: info.Size, body: rc}, nil
}

// s3Blob is a blob streaming from S3. It holds the request's context,
// which OpenBlob's caller owns for as long as it reads.
type s3Blob struct {
	ctx  context.Context
	s    *S3
	key  string
	size int64
	off  int64
	body io.ReadCloser // nil: open at off on the next Read
}

// Size returns the blob's length in bytes.
func (b *s3Blob) Size() int64 { return b.size }

func (b *s3Blob) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	if b.body == nil {
		opts := minio.GetObjectOptions{}
		if b.off > 0 { // SetRange(0, 0) would be the first byte only
			if err := opts.SetRange(b.off, 0); err != nil {
				return 0, err
			}
		}
		rc, _, _, err := b.s.core.GetObject(b.ctx, b.s.bucket, b.key, opts)
		if err != nil {
			return 0, s3Err("read blob", err)
		}
		b.body = rc
	}
	n, err := b.body.Read(p)
	b.off += int64(n)
	if err == io.EOF && b.off < b.size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Seek moves the read position; the next Read starts a ranged GET there.
func (b *s3Blob) Seek(offset int64, whence int) (int64, error) {
	var off int64
	switch whence {
	case io.SeekStart:
		off = offset
	case io.SeekCurrent:
		off = b.off + offset
	case io.SeekEnd:
		off = b.size + offset
	default:
		return 0, fmt.Errorf("%w: seek whence %d", ErrInvalid, whence)
	}
	if off < 0 {
		return 0, fmt.Errorf("%w: negative seek", ErrInvalid)
	}
	if off != b.off && b.body != nil {
		_ = b.body.Close()
		b.body = nil
	}
	b.off = off
	return off, nil
}

// Close ends the GET.
func (b *s3Blob) Close() error {
	if b.body == nil {
		return nil
	}
	err := b.body.Close()
	b.body = nil
	return err
}

// PutBlob receives r into a local temporary file while hashing it, checks
// digest and size, and only then PUTs it (unless the blob is stored
// already) and links it into repo.
func (s *S3) PutBlob(ctx context.Context, repo Repo, d digest.Digest, size int64, r io.Reader) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	tmp, err := s.createTemp("blob-")
	if err != nil {
		return err
	}
	defer discard(tmp)
	n, err := copyVerified(ctx, tmp, d, size, r)
	if err != nil {
		return err
	}
	if err := s.putFile(ctx, d, tmp, n); err != nil {
		return err
	}
	return s.link(ctx, repo, d)
}

// copyVerified copies r to w, checking size (-1: any) and digest.
func copyVerified(ctx context.Context, w io.Writer, d digest.Digest, size int64, r io.Reader) (int64, error) {
	h := d.Algorithm().Hash()
	src := withContext(ctx, r)
	if size >= 0 {
		src = io.LimitReader(src, size+1) // one more byte reveals a longer body
	}
	n, err := io.Copy(io.MultiWriter(w, h), src)
	if err != nil {
		return 0, fmt.Errorf("write blob %s: %w", d, err)
	}
	if size >= 0 && n != size {
		return 0, fmt.Errorf("%w: blob %s: got %d bytes or more, want %d", ErrSizeMismatch, d, n, size)
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return 0, fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, d)
	}
	return n, nil
}

// putFile PUTs the verified content in file (n bytes) as blob d unless an
// object of that size is stored already.
func (s *S3) putFile(ctx context.Context, d digest.Digest, file *os.File, n int64) error {
	key := s.blobKey(d)
	if s.rewriteContent(ctx, key, n) {
		return nil
	}
	_, err := s.client.PutObject(ctx, s.bucket, key, io.NewSectionReader(file, 0, n), n, s.putOptions())
	return s3Err("put blob "+d.String(), err)
}

// putOptions are the options of content PUTs: parts of 64 MiB, uploaded
// two at a time, for blobs larger than one part.
func (s *S3) putOptions() minio.PutObjectOptions {
	return minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: 64 << 20, NumThreads: 2, UserMetadata: s.timeMeta()}
}

// PutVerifiedBlob stores data, which the caller verified against d, and
// links it into repo.
func (s *S3) PutVerifiedBlob(ctx context.Context, repo Repo, d digest.Digest, data []byte) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	if err := s.putContent(ctx, d, data); err != nil {
		return err
	}
	return s.link(ctx, repo, d)
}

// putContent stores verified bytes as blob d unless it is there already.
func (s *S3) putContent(ctx context.Context, d digest.Digest, data []byte) error {
	key := s.blobKey(d)
	if s.rewriteContent(ctx, key, int64(len(data))) {
		return nil
	}
	return s.putSmall(ctx, key, data)
}

// LinkBlob makes a stored blob visible in repo.
func (s *S3) LinkBlob(ctx context.Context, repo Repo, d digest.Digest) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	_, _, err := s.useContent(ctx, s.blobKey(d), true) // a mount is a use
	if errors.Is(err, errNoObject) {
		return fmt.Errorf("%w: %s", ErrBlobUnknown, d)
	}
	if err != nil {
		return fmt.Errorf("link blob %s: %w", d, err)
	}
	return s.link(ctx, repo, d)
}

// UnlinkBlob removes a blob from repo; the content stays.
func (s *S3) UnlinkBlob(ctx context.Context, repo Repo, d digest.Digest) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	key := s.blobLinkKey(repo, d)
	ok, err := s.exists(ctx, key)
	if err != nil {
		return fmt.Errorf("unlink blob %s: %w", d, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s in %s", ErrBlobUnknown, d, repo)
	}
	if err := s.remove(ctx, key); err != nil {
		return err
	}
	s.dropMarkers(ctx, key)
	return nil
}

// link writes repo's link of d unless it is there already.
func (s *S3) link(ctx context.Context, repo Repo, d digest.Digest) error {
	key := s.blobLinkKey(repo, d)
	ok, err := s.exists(ctx, key) // never the cache: another process may have unlinked it
	if _, recent := s.usedRecently(key); err == nil && ok && !recent {
		ok, err = s.useSmall(ctx, key) // linking again is a use
	}
	if err != nil {
		return fmt.Errorf("link blob %s: %w", d, err)
	}
	if ok {
		return nil
	}
	return s.putChecked(ctx, key, []byte(d))
}

// checkLinked returns ErrBlobUnknown unless d is linked in repo; a link
// seen within the metadata TTL, and read at or after since, counts.
func (s *S3) checkLinked(ctx context.Context, repo Repo, d digest.Digest, since time.Time) error {
	ok, err := s.linked(ctx, s.blobLinkKey(repo, d), since)
	if err != nil {
		return fmt.Errorf("stat blob link %s: %w", d, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s in %s", ErrBlobUnknown, d, repo)
	}
	return nil
}

var _ Presigner = (*S3)(nil)

// PresignBlob returns a presigned GET URL of blob d, valid for expiry,
// after checking that d is linked in repo and stored. The URL names the
// configured endpoint: clients must be able to reach it.
func (s *S3) PresignBlob(ctx context.Context, repo Repo, d digest.Digest, expiry time.Duration) (*url.URL, error) {
	if err := check(ctx, repo, d); err != nil {
		return nil, err
	}
	if _, err := s.StatBlob(ctx, repo, d); err != nil {
		return nil, err
	}
	u, err := s.client.PresignedGetObject(ctx, s.bucket, s.blobKey(d), expiry, url.Values{})
	if err != nil {
		return nil, s3Err("presign blob "+d.String(), err)
	}
	return u, nil
}

// Spool starts a stream-through write of blob d into a local temporary
// file; Commit PUTs the verified file and the file goes at Close.
func (s *S3) Spool(ctx context.Context, d digest.Digest, size int64) (Spool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	tmp, err := s.createTemp("spool-")
	if err != nil {
		return nil, err
	}
	commit := func(ctx context.Context, _ Repo, file *os.File) error {
		st, err := file.Stat()
		if err != nil {
			return fmt.Errorf("write blob %s: %w", d, err)
		}
		return s.putFile(ctx, d, file, st.Size())
	}
	link := func(ctx context.Context, repo Repo) error { return s.link(ctx, repo, d) }
	return newFileSpool(tmp, d, size, commit, link, true), nil
}

// Quarantine copies blob d to quarantine/<alg>-<hex>-<unix time> and
// removes it when its bytes do not hash to d, and returns the new key
// (below the prefix). Intact content stays: Quarantine returns "" and no
// error. The copy is conditional on the ETag that was hashed, so content
// replaced meanwhile is not moved.
func (s *S3) Quarantine(ctx context.Context, d digest.Digest) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := checkDigest(d); err != nil {
		return "", err
	}
	key := s.blobKey(d)
	rc, info, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		err = s3Err("quarantine blob "+d.String(), err)
		if errors.Is(err, errNoObject) {
			return "", fmt.Errorf("%w: %s", ErrBlobUnknown, d)
		}
		return "", err
	}
	intact, err := hashesTo(ctx, rc, d)
	_ = rc.Close()
	if err != nil || intact {
		return "", err
	}
	dst := s.prefix + "quarantine/" + string(d.Algorithm()) + "-" + d.Encoded() + "-" + strconv.FormatInt(s.now().Unix(), 10)
	src := minio.CopySrcOptions{Bucket: s.bucket, Object: key, MatchETag: info.ETag}
	if _, err := s.client.CopyObject(ctx, minio.CopyDestOptions{Bucket: s.bucket, Object: dst}, src); err != nil {
		err = s3Err("quarantine blob "+d.String(), err)
		if errors.Is(err, errNoObject) {
			return "", fmt.Errorf("%w: %s", ErrBlobUnknown, d)
		}
		return "", err
	}
	s.manifests.drop(d)
	if err := s.remove(ctx, key); err != nil {
		return "", err
	}
	return s.short(dst), nil
}
