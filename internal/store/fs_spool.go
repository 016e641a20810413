package store

import (
	"context"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
)

var _ Spooler = (*FS)(nil)

// Spool starts a stream-through write of blob d into tmp/.
func (f *FS) Spool(ctx context.Context, d digest.Digest, size int64) (Spool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	tmp, err := f.createTemp("spool-")
	if err != nil {
		return nil, err
	}
	commit := func(_ context.Context, _ Repo, file *os.File) error {
		if err := file.Sync(); err != nil {
			return fmt.Errorf("write blob %s: %w", d, err)
		}
		if err := f.install(file.Name(), f.blobPath(d)); err != nil {
			return err
		}
		return nil
	}
	link := func(_ context.Context, repo Repo) error { return f.link(repo, d) }
	return newFileSpool(tmp, d, size, commit, link, false), nil
}

// newFileSpool starts a spool writing into file. commit makes the verified
// file the stored blob and link links it into a repository; with
// discard, the file is removed at Close even after a commit (a backend
// that copied it elsewhere).
func newFileSpool(file *os.File, d digest.Digest, size int64, commit func(context.Context, Repo, *os.File) error,
	link func(context.Context, Repo) error, discard bool) *fsSpool {
	s := &fsSpool{file: file, d: d, size: size, h: d.Algorithm().Hash(), commitFn: commit, linkFn: link,
		discard: discard, chunks: make(chan []*[]byte, 2), hashed: make(chan struct{})}
	go s.hashLoop()
	return s
}

// fsSpool hashes in its own goroutine, so hashing overlaps with receiving
// and writing: a cold blob streams at the speed of the slowest of the
// three, not of their sum. Written chunks go to it in batches of about
// hashBatch bytes, which keeps the hand-offs (and goroutine wake-ups) few.
type fsSpool struct {
	file *os.File
	d    digest.Digest
	size int64

	commitFn func(context.Context, Repo, *os.File) error
	linkFn   func(context.Context, Repo) error
	discard  bool // remove the file at Close even after a commit

	h      hash.Hash      // owned by hashLoop until hashed is closed
	chunks chan []*[]byte // batches of written bytes, for hashLoop
	hashed chan struct{}  // closed when hashLoop has hashed every chunk
	batch  []*[]byte      // chunks not handed to hashLoop yet
	queued int            // bytes in batch

	mu         sync.Mutex
	n          int64
	flushed    int64 // bytes whose writeback was started
	hashClosed bool
	verified   bool
	committed  bool
	closed     bool
}

// spoolChunks recycles the copies handed to the hashing goroutine.
var spoolChunks = sync.Pool{New: func() any { b := make([]byte, 0, 256<<10); return &b }}

const hashBatch = 1 << 20

func (s *fsSpool) hashLoop() {
	defer close(s.hashed)
	for batch := range s.chunks {
		for _, b := range batch {
			s.h.Write(*b)
			*b = (*b)[:0]
			spoolChunks.Put(b)
		}
	}
}

// queue adds a written chunk to the batch for hashLoop (s.mu held).
func (s *fsSpool) queue(b *[]byte) {
	s.batch = append(s.batch, b)
	s.queued += len(*b)
	if s.queued >= hashBatch {
		s.chunks <- s.batch
		s.batch, s.queued = nil, 0
	}
}

// stopHashing ends the hashing goroutine and waits for it (s.mu held).
func (s *fsSpool) stopHashing() {
	if !s.hashClosed {
		s.hashClosed = true
		if len(s.batch) > 0 {
			s.chunks <- s.batch
			s.batch, s.queued = nil, 0
		}
		close(s.chunks)
	}
	<-s.hashed
}

// acceptLocked checks that n more bytes may be written (s.mu held):
// hashing stops at Verify, Commit and Close, so nothing may follow them.
func (s *fsSpool) acceptLocked(n int) error {
	if s.hashClosed {
		return fmt.Errorf("%w: write to a finished spool", ErrInvalid)
	}
	if s.size >= 0 && s.n+int64(n) > s.size {
		return fmt.Errorf("%w: blob %s: more than %d bytes", ErrSizeMismatch, s.d, s.size)
	}
	return nil
}

// wroteLocked counts n written bytes (s.mu held).
func (s *fsSpool) wroteLocked(n int) {
	s.n += int64(n)
	if s.n-s.flushed >= writebackChunk {
		startWriteback(s.file, s.flushed, s.n-s.flushed)
		s.flushed = s.n
	}
}

func (s *fsSpool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.acceptLocked(len(p)); err != nil {
		return 0, err
	}
	n, err := s.file.Write(p)
	for rest := p[:n]; len(rest) > 0; {
		b := spoolChunks.Get().(*[]byte)
		k := min(len(rest), cap(*b))
		*b = append((*b)[:0], rest[:k]...)
		s.queue(b)
		rest = rest[k:]
	}
	s.wroteLocked(n)
	return n, err
}

// Fill reads r to its end into the spool, calling progress after each
// chunk is written. Unlike Write it hands its own read buffers to the
// hashing goroutine, so no byte is copied an extra time.
func (s *fsSpool) Fill(r io.Reader, progress func(n int64)) error {
	for {
		b := spoolChunks.Get().(*[]byte)
		buf := (*b)[:cap(*b)]
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := s.writeOwned(b, buf[:n]); err != nil {
				return err
			}
			progress(int64(n))
		} else {
			spoolChunks.Put(b)
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// writeOwned writes p (the contents of b) and passes b on to be hashed.
func (s *fsSpool) writeOwned(b *[]byte, p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.acceptLocked(len(p)); err != nil {
		spoolChunks.Put(b)
		return err
	}
	n, err := s.file.Write(p)
	if n < len(p) && err == nil {
		err = io.ErrShortWrite
	}
	if err != nil {
		spoolChunks.Put(b)
		return fmt.Errorf("write blob %s: %w", s.d, err)
	}
	*b = p
	s.queue(b)
	s.wroteLocked(n)
	return nil
}

// writebackChunk is how many written bytes a spool lets accumulate before
// it starts their writeback: a large blob then reaches the disk while it
// streams, instead of in one long fsync at the end that would compete with
// the client's own writes.
const writebackChunk = 8 << 20

// ReadAt reads written bytes; it works after Commit too, until Close.
func (s *fsSpool) ReadAt(p []byte, off int64) (int, error) { return s.file.ReadAt(p, off) }

// Verify checks size and digest of everything written; no write may
// follow a successful Verify.
func (s *fsSpool) Verify() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verifyLocked()
}

func (s *fsSpool) verifyLocked() error {
	if s.verified {
		return nil
	}
	if s.committed || s.closed {
		return fmt.Errorf("%w: spool already finished", ErrInvalid)
	}
	if s.size >= 0 && s.n != s.size {
		return fmt.Errorf("%w: blob %s: got %d bytes, want %d", ErrSizeMismatch, s.d, s.n, s.size)
	}
	s.stopHashing()
	if got := digest.NewDigest(s.d.Algorithm(), s.h); got != s.d {
		return fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, s.d)
	}
	s.verified = true
	return nil
}

func (s *fsSpool) Commit(ctx context.Context, repo Repo) error {
	if err := check(ctx, repo, s.d); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed || s.closed {
		return fmt.Errorf("%w: spool already finished", ErrInvalid)
	}
	if err := s.verifyLocked(); err != nil {
		return err
	}
	if err := s.commitFn(ctx, repo, s.file); err != nil {
		return err
	}
	s.committed = true
	return s.linkFn(ctx, repo)
}

func (s *fsSpool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.stopHashing()
	s.closed = true
	err := s.file.Close()
	if !s.committed || s.discard {
		_ = os.Remove(s.file.Name())
	}
	return err
}
