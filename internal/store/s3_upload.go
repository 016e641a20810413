package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"
)

// chunkName is a chunk's object name: its offset in 16 hex digits, so key
// order is offset order.
func chunkName(off int64) string { return fmt.Sprintf("%016x", off) }

// StartUpload opens a new upload session in repo, within opts' caps.
func (s *S3) StartUpload(ctx context.Context, repo Repo, opts StartUploadOptions) (UploadStatus, error) {
	if err := check(ctx, repo); err != nil {
		return UploadStatus{}, err
	}
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if opts.MaxPerRepo > 0 || opts.MaxPerOwner > 0 {
		if err := s.checkUploadCaps(ctx, repo, opts); err != nil {
			return UploadStatus{}, err
		}
	}
	state, err := marshalHash(sha256.New())
	if err != nil {
		return UploadStatus{}, fmt.Errorf("start upload: %w", err)
	}
	id := uuid.NewString()
	now := s.now()
	info := uploadInfo{Registry: repo.Registry, Repo: repo.Name, Owner: opts.Owner, Started: now, Updated: now, SHA256: state}
	if err := s.putJSON(ctx, s.uploadKey(id)+"info.json", info); err != nil {
		return UploadStatus{}, fmt.Errorf("start upload: %w", err)
	}
	s.noteSession(id, &info)
	return UploadStatus{ID: id, Repo: repo, Owner: opts.Owner}, nil
}

// checkUploadCaps counts the open sessions of repo and of opts.Owner.
func (s *S3) checkUploadCaps(ctx context.Context, repo Repo, opts StartUploadOptions) error {
	sessions, err := s.openSessions(ctx)
	if err != nil {
		return fmt.Errorf("start upload: %w", err)
	}
	return uploadCaps(sessions, s.expired, repo, opts)
}

// uploadIDs lists the ids of the sessions in the bucket. Sessions come and
// go while it lists (other processes commit and cancel theirs), which an
// S3-compatible server over a filesystem may answer with a failed
// listing: a failed listing is tried again, twice, from the start.
func (s *S3) uploadIDs(ctx context.Context) ([]string, error) {
	dir := s.prefix + "uploads/"
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 25 * time.Millisecond):
			}
		}
		var ids []string
		err = s.list(ctx, dir, false, func(obj minio.ObjectInfo) error {
			id, isDir := strings.CutSuffix(strings.TrimPrefix(obj.Key, dir), "/")
			if isDir && checkUploadID(id) == nil {
				ids = append(ids, id)
			}
			return nil
		})
		if err == nil || ctx.Err() != nil {
			return ids, err
		}
	}
	return nil, err
}

// openSessions lists the sessions with their repository, owner and
// activity, reading info.json only of sessions this process has not seen
// (see FS.openSessions).
func (s *S3) openSessions(ctx context.Context) (map[string]uploadInfo, error) {
	ids, err := s.uploadIDs(ctx)
	if err != nil {
		return nil, err
	}
	s.sessMu.Lock()
	known := s.sessions
	s.sessMu.Unlock()
	seen := make(map[string]uploadInfo, len(ids))
	for _, id := range ids {
		if info, ok := known[id]; ok {
			seen[id] = info
			continue
		}
		var info uploadInfo
		if err := s.getJSON(ctx, s.uploadKey(id)+"info.json", &info); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue // being started, or broken: ExpireUploads deals with it
		}
		info.SHA256 = nil
		seen[id] = info
	}
	s.sessMu.Lock()
	for id, info := range s.sessions {
		if _, ok := seen[id]; ok {
			seen[id] = info
		}
	}
	s.sessions = seen
	s.sessMu.Unlock()
	return seen, nil
}

// noteSession records a session's info (nil: ended) for openSessions.
func (s *S3) noteSession(id string, info *uploadInfo) {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if info == nil {
		delete(s.sessions, id)
		return
	}
	if s.sessions == nil {
		s.sessions = map[string]uploadInfo{}
	}
	i := *info
	i.SHA256 = nil
	s.sessions[id] = i
}

// expired reports whether a session last active at t is past the expiry.
func (s *S3) expired(t time.Time) bool {
	return s.uploadExpiry > 0 && t.Before(s.now().Add(-s.uploadExpiry))
}

// session loads upload id and checks that it belongs to repo and is not
// expired.
func (s *S3) session(ctx context.Context, repo Repo, id string) (uploadInfo, error) {
	var info uploadInfo
	if err := checkUploadID(id); err != nil {
		return info, err
	}
	err := s.getJSON(ctx, s.uploadKey(id)+"info.json", &info)
	if errors.Is(err, errNoObject) {
		return info, fmt.Errorf("%w: %s", ErrUploadUnknown, id)
	}
	if err != nil {
		return info, fmt.Errorf("upload %s: %w", id, err)
	}
	if info.Registry != repo.Registry || info.Repo != repo.Name {
		return info, fmt.Errorf("%w: %s in %s", ErrUploadUnknown, id, repo)
	}
	if s.expired(info.active()) {
		return info, fmt.Errorf("%w: %s expired", ErrUploadUnknown, id)
	}
	return info, nil
}

// UploadStatus reports a session's progress.
func (s *S3) UploadStatus(ctx context.Context, repo Repo, id string) (UploadStatus, error) {
	if err := check(ctx, repo); err != nil {
		return UploadStatus{}, err
	}
	info, err := s.session(ctx, repo, id)
	if err != nil {
		return UploadStatus{}, err
	}
	return UploadStatus{ID: id, Repo: repo, Offset: info.Offset, Owner: info.Owner}, nil
}

// lockUpload validates id and serialises work on it within the process.
func (s *S3) lockUpload(ctx context.Context, id string) (func(), error) {
	if err := checkUploadID(id); err != nil {
		return nil, err
	}
	return s.uploads.lock(ctx, id)
}

// AppendUpload receives r into a local temporary file while hashing it,
// PUTs it as the chunk at the session's offset and then records the new
// offset and hash state in info.json. A chunk that fails midway changes
// nothing; a chunk PUT whose info.json update was lost is overwritten by
// the next append at that offset.
func (s *S3) AppendUpload(ctx context.Context, repo Repo, id string, offset int64, r io.Reader) (UploadStatus, error) {
	if err := check(ctx, repo); err != nil {
		return UploadStatus{}, err
	}
	unlock, err := s.lockUpload(ctx, id)
	if err != nil {
		return UploadStatus{}, err
	}
	defer unlock()
	info, err := s.session(ctx, repo, id)
	if err != nil {
		return UploadStatus{}, err
	}
	if offset >= 0 && offset != info.Offset {
		return UploadStatus{}, fmt.Errorf("%w: chunk at %d, upload has %d bytes", ErrRangeInvalid, offset, info.Offset)
	}
	h := sha256.New()
	if err := unmarshalHash(h, info.SHA256); err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	tmp, err := s.createTemp("chunk-")
	if err != nil {
		return UploadStatus{}, err
	}
	defer discard(tmp)
	n, err := io.Copy(io.MultiWriter(tmp, h), withContext(ctx, r))
	if err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	if n > 0 {
		key := s.uploadKey(id) + chunkName(info.Offset)
		if _, err := s.client.PutObject(ctx, s.bucket, key, io.NewSectionReader(tmp, 0, n), n, s.putOptions()); err != nil {
			return UploadStatus{}, s3Err(fmt.Sprintf("upload %s", id), err)
		}
	}
	info.Offset += n
	info.Updated = s.now()
	if info.SHA256, err = marshalHash(h); err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	if err := s.putJSON(ctx, s.uploadKey(id)+"info.json", info); err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	s.noteSession(id, &info)
	return UploadStatus{ID: id, Repo: repo, Offset: info.Offset, Owner: info.Owner}, nil
}

// CommitUpload checks the session's digest (from the saved state for
// sha256), streams its chunks through a hash into a local temporary file,
// PUTs the blob once it matches d, links it into repo and ends the
// session. On ErrDigestMismatch the session is kept.
func (s *S3) CommitUpload(ctx context.Context, repo Repo, id string, d digest.Digest) (int64, error) {
	if err := check(ctx, repo, d); err != nil {
		return 0, err
	}
	unlock, err := s.lockUpload(ctx, id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	info, err := s.session(ctx, repo, id)
	if err != nil {
		return 0, err
	}
	if d.Algorithm() == digest.SHA256 {
		h := sha256.New()
		if err := unmarshalHash(h, info.SHA256); err != nil {
			return 0, fmt.Errorf("commit upload %s: %w", id, err)
		}
		if got := digest.NewDigest(digest.SHA256, h); got != d {
			return 0, fmt.Errorf("%w: upload hashes to %s, want %s", ErrDigestMismatch, got, d)
		}
	}
	tmp, err := s.createTemp("commit-")
	if err != nil {
		return 0, err
	}
	defer discard(tmp)
	h := d.Algorithm().Hash()
	if err := s.readChunks(ctx, id, info.Offset, io.MultiWriter(tmp, h)); err != nil {
		return 0, fmt.Errorf("commit upload %s: %w", id, err)
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return 0, fmt.Errorf("%w: upload hashes to %s, want %s", ErrDigestMismatch, got, d)
	}
	if err := s.putFile(ctx, d, tmp, info.Offset); err != nil {
		return 0, fmt.Errorf("commit upload %s: %w", id, err)
	}
	if err := s.link(ctx, repo, d); err != nil {
		return 0, err
	}
	if err := s.removeSession(ctx, id); err != nil {
		return 0, fmt.Errorf("commit upload %s: %w", id, err)
	}
	return info.Offset, nil
}

// readChunks copies the first size bytes of session id, chunk after chunk
// from offset 0, to w.
func (s *S3) readChunks(ctx context.Context, id string, size int64, w io.Writer) error {
	var off int64
	for off < size {
		key := s.uploadKey(id) + chunkName(off)
		rc, _, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return s3Err("read chunk at "+strconv.FormatInt(off, 10), err)
		}
		n, err := io.Copy(w, io.LimitReader(withContext(ctx, rc), size-off))
		_ = rc.Close()
		if err != nil {
			return s3Err("read chunk at "+strconv.FormatInt(off, 10), err)
		}
		if n == 0 {
			return fmt.Errorf("%w: empty chunk at %d", ErrUploadUnknown, off)
		}
		off += n
	}
	return nil
}

// removeSession deletes a session: info.json first, so that it ends at
// once, then its chunks.
func (s *S3) removeSession(ctx context.Context, id string) error {
	dir := s.uploadKey(id)
	if err := s.remove(ctx, dir+"info.json"); err != nil {
		return err
	}
	s.noteSession(id, nil)
	var keys []string
	if err := s.list(ctx, dir, true, func(obj minio.ObjectInfo) error {
		keys = append(keys, obj.Key)
		return nil
	}); err != nil {
		return err
	}
	for _, key := range keys {
		if err := s.remove(ctx, key); err != nil {
			return err
		}
	}
	return nil
}

// CancelUpload ends a session and discards its data.
func (s *S3) CancelUpload(ctx context.Context, repo Repo, id string) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	unlock, err := s.lockUpload(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.session(ctx, repo, id); err != nil {
		return err
	}
	if err := s.removeSession(ctx, id); err != nil {
		return fmt.Errorf("cancel upload %s: %w", id, err)
	}
	return nil
}

// ExpireUploads removes the sessions idle since before cutoff, and the
// chunks of sessions without info.json (a commit or cancel cut short)
// last written before cutoff. A session busy in this process is left for
// the next run.
func (s *S3) ExpireUploads(ctx context.Context, cutoff time.Time) (int, error) {
	ids, err := s.uploadIDs(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		unlock, ok := s.uploads.tryLock(id)
		if !ok {
			continue
		}
		gone, err := s.expireUpload(ctx, id, cutoff)
		unlock()
		if err != nil {
			return n, fmt.Errorf("expire upload %s: %w", id, err)
		}
		if gone {
			n++
		}
	}
	return n, nil
}

// expireUpload removes session id if it is idle since before cutoff.
func (s *S3) expireUpload(ctx context.Context, id string, cutoff time.Time) (bool, error) {
	var info uploadInfo
	err := s.getJSON(ctx, s.uploadKey(id)+"info.json", &info)
	switch {
	case err == nil:
		if !info.active().Before(cutoff) {
			return false, nil
		}
	case errors.Is(err, errNoObject):
		// Leftover chunks: judged by the server's modification times.
		newest := time.Time{}
		if err := s.list(ctx, s.uploadKey(id), true, func(obj minio.ObjectInfo) error {
			if obj.LastModified.After(newest) {
				newest = obj.LastModified
			}
			return nil
		}); err != nil {
			return false, err
		}
		if !newest.Before(cutoff) {
			return false, nil
		}
	default:
		return false, err
	}
	if err := s.removeSession(ctx, id); err != nil {
		return false, err
	}
	return true, nil
}
