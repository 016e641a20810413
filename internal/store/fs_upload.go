package store

import (
	"context"
	"crypto/sha256"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
)

// uploadInfo is the file uploads/<id>/info.json. Offset counts the bytes of
// data that belong to the session; anything beyond it is a leftover of an
// interrupted append and is truncated away.
type uploadInfo struct {
	Registry string    `json:"registry"`
	Repo     string    `json:"repo"`
	Owner    string    `json:"owner,omitempty"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"` // last chunk received (or Started)
	Offset   int64     `json:"offset"`
	SHA256   []byte    `json:"sha256State"` // marshalled hash of data[:Offset]
}

// active is when the session last saw a chunk. Sessions written before
// Updated existed count from their start.
func (i uploadInfo) active() time.Time {
	if i.Updated.After(i.Started) {
		return i.Updated
	}
	return i.Started
}

// StartUpload opens a new upload session in repo, within opts' caps.
func (f *FS) StartUpload(ctx context.Context, repo Repo, opts StartUploadOptions) (UploadStatus, error) {
	if err := check(ctx, repo); err != nil {
		return UploadStatus{}, err
	}
	f.startMu.Lock()
	defer f.startMu.Unlock()
	if opts.MaxPerRepo > 0 || opts.MaxPerOwner > 0 {
		if err := f.checkUploadCaps(ctx, repo, opts); err != nil {
			return UploadStatus{}, err
		}
	}
	id := uuid.NewString()
	dir := f.uploadDir(id)
	info, err := f.startUpload(repo, opts.Owner, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return UploadStatus{}, fmt.Errorf("start upload: %w", err)
	}
	f.noteSession(id, &info)
	return UploadStatus{ID: id, Repo: repo, Owner: opts.Owner}, nil
}

// checkUploadCaps counts the open sessions of repo and of opts.Owner.
func (f *FS) checkUploadCaps(ctx context.Context, repo Repo, opts StartUploadOptions) error {
	sessions, err := f.openSessions(ctx)
	if err != nil {
		return fmt.Errorf("start upload: %w", err)
	}
	return uploadCaps(sessions, f.expired, repo, opts)
}

// uploadCaps checks opts' caps against the open sessions, those not
// expired, of repo and of opts.Owner.
func uploadCaps(sessions map[string]uploadInfo, expired func(time.Time) bool, repo Repo, opts StartUploadOptions) error {
	inRepo, ofOwner := 0, 0
	for _, info := range sessions {
		if expired(info.active()) {
			continue
		}
		if info.Registry == repo.Registry && info.Repo == repo.Name {
			inRepo++
		}
		if info.Owner == opts.Owner {
			ofOwner++
		}
	}
	if opts.MaxPerRepo > 0 && inRepo >= opts.MaxPerRepo {
		return fmt.Errorf("%w: %d open in %s (at most %d)", ErrTooManyUploads, inRepo, repo, opts.MaxPerRepo)
	}
	if opts.MaxPerOwner > 0 && ofOwner >= opts.MaxPerOwner {
		return fmt.Errorf("%w: %d open by this user (at most %d)", ErrTooManyUploads, ofOwner, opts.MaxPerOwner)
	}
	return nil
}

// openSessions lists the sessions in uploads/ with their repository, owner
// and activity. Their info is read from disk only for sessions this
// process has not seen yet (a session's repository and owner never
// change; appends here keep its activity current), so a start costs one
// directory listing rather than a read per open session.
func (f *FS) openSessions(ctx context.Context) (map[string]uploadInfo, error) {
	entries, err := os.ReadDir(filepath.Join(f.root, "uploads"))
	if err != nil {
		return nil, err
	}
	f.sessMu.Lock()
	known := f.sessions
	f.sessMu.Unlock()
	seen := make(map[string]uploadInfo, len(entries))
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		id := e.Name()
		if info, ok := known[id]; ok {
			seen[id] = info
			continue
		}
		if checkUploadID(id) != nil {
			continue
		}
		var info uploadInfo
		if readJSON(filepath.Join(f.uploadDir(id), "info.json"), &info) != nil {
			continue // being started, or broken: ExpireUploads deals with it
		}
		info.SHA256 = nil
		seen[id] = info
	}
	f.sessMu.Lock()
	// Keep what appends recorded meanwhile.
	for id, info := range f.sessions {
		if _, ok := seen[id]; ok {
			seen[id] = info
		}
	}
	f.sessions = seen
	f.sessMu.Unlock()
	return seen, nil
}

// noteSession records a session's info (nil: the session ended) in the
// cache openSessions reads.
func (f *FS) noteSession(id string, info *uploadInfo) {
	f.sessMu.Lock()
	defer f.sessMu.Unlock()
	if info == nil {
		delete(f.sessions, id)
		return
	}
	if f.sessions == nil {
		f.sessions = map[string]uploadInfo{}
	}
	i := *info
	i.SHA256 = nil
	f.sessions[id] = i
}

// eachUpload calls fn with every session's id, info and the time of its
// last change; a session whose info cannot be read (a start cut short by a
// crash) comes with a zero info and its directory's modification time.
func (f *FS) eachUpload(ctx context.Context, fn func(id string, info uploadInfo, active time.Time) error) error {
	entries, err := os.ReadDir(filepath.Join(f.root, "uploads"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		id := e.Name()
		if checkUploadID(id) != nil {
			continue
		}
		var info uploadInfo
		var active time.Time
		if err := readJSON(filepath.Join(f.uploadDir(id), "info.json"), &info); err == nil {
			active = info.active()
		} else if st, err := e.Info(); err == nil {
			info, active = uploadInfo{}, st.ModTime()
		} else {
			continue // removed meanwhile
		}
		if err := fn(id, info, active); err != nil {
			return err
		}
	}
	return nil
}

// expired reports whether a session last active at t is past the expiry.
func (f *FS) expired(t time.Time) bool {
	return f.uploadExpiry > 0 && t.Before(f.now().Add(-f.uploadExpiry))
}

// ExpireUploads removes the sessions idle since before cutoff. A session
// busy with a chunk right now is left for the next run.
func (f *FS) ExpireUploads(ctx context.Context, cutoff time.Time) (int, error) {
	n := 0
	err := f.eachUpload(ctx, func(id string, _ uploadInfo, active time.Time) error {
		if !active.Before(cutoff) {
			return nil
		}
		unlock, ok := f.uploads.tryLock(id)
		if !ok {
			return nil
		}
		defer unlock()
		// Look again under the lock: a chunk may have just arrived. A chunk
		// still arriving (in another process, whose lock this one cannot
		// see) keeps moving the data file's modification time.
		var info uploadInfo
		if err := readJSON(filepath.Join(f.uploadDir(id), "info.json"), &info); err == nil && !info.active().Before(cutoff) {
			return nil
		}
		if st, err := os.Stat(filepath.Join(f.uploadDir(id), "data")); err == nil && !st.ModTime().Before(cutoff) {
			return nil
		}
		if err := os.RemoveAll(f.uploadDir(id)); err != nil {
			return fmt.Errorf("expire upload %s: %w", id, err)
		}
		f.noteSession(id, nil)
		n++
		return nil
	})
	return n, err
}

func (f *FS) startUpload(repo Repo, owner, dir string) (uploadInfo, error) {
	if err := f.mkdirs(dir); err != nil {
		return uploadInfo{}, err
	}
	data, err := os.OpenFile(filepath.Join(dir, "data"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, f.fileMode)
	if err != nil {
		return uploadInfo{}, err
	}
	if err := data.Chmod(f.fileMode); err != nil { // past the umask
		_ = data.Close()
		return uploadInfo{}, err
	}
	if err := data.Close(); err != nil {
		return uploadInfo{}, err
	}
	state, err := marshalHash(sha256.New())
	if err != nil {
		return uploadInfo{}, err
	}
	now := f.now()
	if err := os.Chtimes(filepath.Join(dir, "data"), now, now); err != nil { // on the store's clock
		return uploadInfo{}, err
	}
	info := uploadInfo{Registry: repo.Registry, Repo: repo.Name, Owner: owner, Started: now, Updated: now, SHA256: state}
	return info, f.writeJSON(filepath.Join(dir, "info.json"), info)
}

// UploadStatus reports a session's progress.
func (f *FS) UploadStatus(ctx context.Context, repo Repo, id string) (UploadStatus, error) {
	if err := check(ctx, repo); err != nil {
		return UploadStatus{}, err
	}
	info, err := f.session(repo, id)
	if err != nil {
		return UploadStatus{}, err
	}
	return UploadStatus{ID: id, Repo: repo, Offset: info.Offset, Owner: info.Owner}, nil
}

// AppendUpload appends r to the session after checking offset (-1 skips
// the check). When r fails midway the chunk is dropped and the offset is
// unchanged, so the client can resend it.
func (f *FS) AppendUpload(ctx context.Context, repo Repo, id string, offset int64, r io.Reader) (UploadStatus, error) {
	if err := check(ctx, repo); err != nil {
		return UploadStatus{}, err
	}
	unlock, err := f.lockUpload(ctx, id)
	if err != nil {
		return UploadStatus{}, err
	}
	defer unlock()
	info, err := f.session(repo, id)
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
	n, err := appendData(ctx, filepath.Join(f.uploadDir(id), "data"), info.Offset, r, h)
	if err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	info.Offset += n
	info.Updated = f.now()
	// The data file's modification time tells ExpireUploads of other
	// processes that a chunk is arriving; keep it on the store's clock.
	if err := os.Chtimes(filepath.Join(f.uploadDir(id), "data"), info.Updated, info.Updated); err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	if info.SHA256, err = marshalHash(h); err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	if err := f.writeJSON(filepath.Join(f.uploadDir(id), "info.json"), info); err != nil {
		return UploadStatus{}, fmt.Errorf("upload %s: %w", id, err)
	}
	f.noteSession(id, &info)
	return UploadStatus{ID: id, Repo: repo, Offset: info.Offset, Owner: info.Owner}, nil
}

// appendData writes r to the file at path from offset on, feeding h too,
// and syncs it. On error the file is cut back to offset.
func appendData(ctx context.Context, path string, offset int64, r io.Reader, h hash.Hash) (int64, error) {
	file, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer file.Close()
	// Bytes past offset were written by an append whose info.json update
	// never happened; they are not part of the session.
	if err := file.Truncate(offset); err != nil {
		return 0, err
	}
	if _, err := file.Seek(offset, io.SeekStart); err != nil {
		return 0, err
	}
	n, err := io.Copy(io.MultiWriter(file, h), withContext(ctx, r))
	if err == nil {
		err = file.Sync()
	}
	if err != nil {
		_ = file.Truncate(offset)
		return 0, err
	}
	return n, file.Close()
}

// CommitUpload verifies the session's data against d, moves it into the
// store, links it into repo and ends the session. On ErrDigestMismatch the
// session is kept, so the caller decides: distribution-style handlers
// call CancelUpload.
func (f *FS) CommitUpload(ctx context.Context, repo Repo, id string, d digest.Digest) (int64, error) {
	if err := check(ctx, repo, d); err != nil {
		return 0, err
	}
	unlock, err := f.lockUpload(ctx, id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	info, err := f.session(repo, id)
	if err != nil {
		return 0, err
	}
	path := filepath.Join(f.uploadDir(id), "data")
	got, err := uploadDigest(ctx, path, info, d.Algorithm())
	if err != nil {
		return 0, fmt.Errorf("commit upload %s: %w", id, err)
	}
	if got != d {
		return 0, fmt.Errorf("%w: upload hashes to %s, want %s", ErrDigestMismatch, got, d)
	}
	if err := f.install(path, f.blobPath(d)); err != nil {
		return 0, fmt.Errorf("commit upload %s: %w", id, err)
	}
	if err := f.link(repo, d); err != nil {
		return 0, err
	}
	if err := os.RemoveAll(f.uploadDir(id)); err != nil {
		return 0, fmt.Errorf("commit upload %s: %w", id, err)
	}
	f.noteSession(id, nil)
	return info.Offset, nil
}

// uploadDigest cuts the data file to the session's offset, syncs it and
// returns its digest: from the saved state for sha256, by re-reading the
// file for other algorithms.
func uploadDigest(ctx context.Context, path string, info uploadInfo, alg digest.Algorithm) (digest.Digest, error) {
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer file.Close()
	if err := file.Truncate(info.Offset); err != nil {
		return "", err
	}
	if err := file.Sync(); err != nil {
		return "", err
	}
	if alg == digest.SHA256 {
		h := sha256.New()
		if err := unmarshalHash(h, info.SHA256); err != nil {
			return "", err
		}
		return digest.NewDigest(alg, h), nil
	}
	h := alg.Hash()
	if _, err := io.Copy(h, withContext(ctx, io.NewSectionReader(file, 0, info.Offset))); err != nil {
		return "", err
	}
	return digest.NewDigest(alg, h), nil
}

// CancelUpload ends a session and discards its data.
func (f *FS) CancelUpload(ctx context.Context, repo Repo, id string) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	unlock, err := f.lockUpload(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := f.session(repo, id); err != nil {
		return err
	}
	if err := os.RemoveAll(f.uploadDir(id)); err != nil {
		return fmt.Errorf("cancel upload %s: %w", id, err)
	}
	f.noteSession(id, nil)
	return nil
}

// lockUpload validates id and serialises work on it within the process.
func (f *FS) lockUpload(ctx context.Context, id string) (func(), error) {
	if err := checkUploadID(id); err != nil {
		return nil, err
	}
	return f.uploads.lock(ctx, id)
}

// session loads upload id and checks that it belongs to repo. A session of
// another repository, or idle past the upload expiry, is reported as
// unknown.
func (f *FS) session(repo Repo, id string) (uploadInfo, error) {
	var info uploadInfo
	if err := checkUploadID(id); err != nil {
		return info, err
	}
	err := readJSON(filepath.Join(f.uploadDir(id), "info.json"), &info)
	if errors.Is(err, fs.ErrNotExist) {
		return info, fmt.Errorf("%w: %s", ErrUploadUnknown, id)
	}
	if err != nil {
		return info, fmt.Errorf("upload %s: %w", id, err)
	}
	if info.Registry != repo.Registry || info.Repo != repo.Name {
		return info, fmt.Errorf("%w: %s in %s", ErrUploadUnknown, id, repo)
	}
	if f.expired(info.active()) {
		return info, fmt.Errorf("%w: %s expired", ErrUploadUnknown, id)
	}
	return info, nil
}

// checkUploadID accepts only canonical UUIDs, which keeps ids from naming
// paths; anything else is an unknown upload.
func checkUploadID(id string) error {
	u, err := uuid.Parse(id)
	if err != nil || u.String() != id {
		return fmt.Errorf("%w: malformed id", ErrUploadUnknown)
	}
	return nil
}

func marshalHash(h hash.Hash) ([]byte, error) {
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil, errors.New("hash state cannot be saved")
	}
	return m.MarshalBinary()
}

func unmarshalHash(h hash.Hash, state []byte) error {
	u, ok := h.(encoding.BinaryUnmarshaler)
	if !ok {
		return errors.New("hash state cannot be restored")
	}
	if err := u.UnmarshalBinary(state); err != nil {
		return fmt.Errorf("restore hash state: %w", err)
	}
	return nil
}
