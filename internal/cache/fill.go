package cache

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

type fillKey struct {
	registry string
	d        digest.Digest
}

// fill is one upstream blob download that any number of readers follow.
// Lock order: the fills set's mutex before fill.mu (never held together in
// practice).
type fill struct {
	repo      store.Repo    // the repository it stores into (others link it, see shareFill)
	ready     chan struct{} // closed when the size and spool are known, or the fill failed
	done      chan struct{} // closed when the fill ended
	readyOnce sync.Once

	mu         sync.Mutex
	progress   chan struct{} // closed and replaced whenever bytes arrive
	body       fillBody      // what readers read: the store's spool or memory
	size       int64
	written    int64
	readers    int
	finished   bool
	handed     bool // a reader was given out
	notFetched bool // the blob was stored by someone else; this fill only waited
	verified   bool // every byte is written and matches the digest
	err        error

	foreground bool   // started by a client request: stored write-behind
	endActive  func() // ends the fill's share of the cache's activity
}

// wakeLocked wakes the readers waiting for progress (f.mu held).
func (f *fill) wakeLocked() {
	close(f.progress)
	f.progress = make(chan struct{})
}

// markVerified lets readers have the final byte.
func (f *fill) markVerified() {
	f.mu.Lock()
	f.verified = true
	f.wakeLocked()
	f.mu.Unlock()
}

func (f *fill) setNotFetched() {
	f.mu.Lock()
	f.notFetched = true
	f.mu.Unlock()
}

func (f *fill) wasNotFetched() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.notFetched
}

func newFill(repo store.Repo) *fill {
	return &fill{repo: repo, ready: make(chan struct{}), done: make(chan struct{}), progress: make(chan struct{}), size: -1}
}

// fillBody is what readers of a fill read while it arrives.
type fillBody interface {
	io.ReaderAt
	io.Closer
}

func (f *fill) markReady(body fillBody, size int64) {
	f.mu.Lock()
	f.body, f.size = body, size
	f.mu.Unlock()
	f.readyOnce.Do(func() { close(f.ready) })
}

func (f *fill) knownSize() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size
}

func (f *fill) exposed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.handed
}

func (f *fill) advance(n int64) {
	f.mu.Lock()
	f.written += n
	f.wakeLocked()
	f.mu.Unlock()
}

func (f *fill) finish(err error) {
	f.mu.Lock()
	f.finished, f.err = true, err
	f.wakeLocked()
	release := f.readers == 0 && f.body != nil
	f.mu.Unlock()
	if release {
		_ = f.body.Close()
	}
	f.readyOnce.Do(func() { close(f.ready) })
	close(f.done)
}

func (f *fill) result() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// reader returns a reader following the spool, unless there is none (no
// spool, or the fill failed before streaming).
func (f *fill) reader(cancel <-chan struct{}) (*fillReader, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.body == nil || f.size < 0 || (f.finished && f.err != nil) {
		return nil, false
	}
	if f.finished && f.readers == 0 {
		return nil, false // spool already closed; the blob is in the store
	}
	f.readers++
	f.handed = true
	return &fillReader{f: f, cancel: cancel}, true
}

func (f *fill) release() {
	f.mu.Lock()
	f.readers--
	closeSpool := f.readers == 0 && f.finished
	f.mu.Unlock()
	if closeSpool {
		_ = f.body.Close()
	}
}

// fillReader reads a blob while its fill writes it. It holds back the last
// byte until the fill verified the digest.
type fillReader struct {
	f       *fill
	off     int64
	cancel  <-chan struct{}
	closed  bool
	onClose func() // run once by Close
}

func (r *fillReader) Size() int64 { return r.f.size }

// wait blocks until bytes beyond r.off may be read and returns how far:
// everything written, less the last byte until the digest is verified.
// It returns io.EOF at the end and the fill's error if it failed.
func (r *fillReader) wait() (int64, error) {
	f := r.f
	for {
		f.mu.Lock()
		written, finished, err, progress, size, verified := f.written, f.finished, f.err, f.progress, f.size, f.verified
		f.mu.Unlock()
		limit := written
		if !verified && limit >= size {
			limit = size - 1
		}
		if r.off < limit {
			return limit, nil
		}
		if verified && r.off >= size {
			return 0, io.EOF
		}
		if finished {
			if err != nil {
				return 0, err
			}
			if r.off >= size {
				return 0, io.EOF
			}
		}
		select {
		case <-progress:
		case <-r.cancel:
			return 0, context.Canceled
		}
	}
}

// WaitVerified blocks until every byte of the blob has arrived and hashed
// to its digest, and returns the fill's error if it failed instead (or
// ctx's). A reader of part of the blob (a Range request) calls it first:
// no byte is handed out unverified, while a whole-blob reader streams and
// only the last byte waits.
func (r *fillReader) WaitVerified(ctx context.Context) error {
	f := r.f
	for {
		f.mu.Lock()
		verified, finished, err, progress := f.verified, f.finished, f.err, f.progress
		f.mu.Unlock()
		switch {
		case verified:
			return nil
		case finished:
			if err == nil {
				err = errors.New("cache: blob fill ended unverified")
			}
			return err
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.cancel:
			return context.Canceled
		}
	}
}

// Seek moves the read offset (io.SeekStart and io.SeekCurrent), so a
// reader of part of the blob skips to it without reading what comes before.
func (r *fillReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	default:
		return r.off, errors.New("cache: unsupported seek")
	}
	if offset < 0 || offset > r.f.size {
		return r.off, errors.New("cache: seek out of range")
	}
	r.off = offset
	return offset, nil
}

func (r *fillReader) Read(p []byte) (int, error) {
	limit, err := r.wait()
	if err != nil {
		return 0, err
	}
	n := min(int64(len(p)), limit-r.off)
	m, rerr := r.f.body.ReadAt(p[:n], r.off)
	r.off += int64(m)
	if rerr == io.EOF && m > 0 {
		rerr = nil
	}
	return m, rerr
}

// bufPool holds the buffers readers copy a spool file through.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// WriteTo writes the rest of the blob to w as it arrives: a blob in
// memory without an intermediate copy, a spool file through a buffer.
// (sendfile(2) from the spool measured slower than the copy on loopback
// here, with the bytes just written and still in the page cache.)
func (r *fillReader) WriteTo(w io.Writer) (int64, error) {
	if mem, ok := r.f.body.(*memSpool); ok {
		return r.writeEach(func(limit int64) (int64, error) {
			n, err := w.Write(mem.buf[r.off:limit])
			return int64(n), err
		})
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	return r.writeEach(func(limit int64) (int64, error) {
		n, err := r.f.body.ReadAt((*bp)[:min(int64(len(*bp)), limit-r.off)], r.off)
		if n == 0 {
			return 0, err
		}
		m, err := w.Write((*bp)[:n])
		return int64(m), err
	})
}

// writeEach calls write whenever bytes up to limit may be read, until the
// blob ends; write returns how many bytes past r.off it wrote.
func (r *fillReader) writeEach(write func(limit int64) (int64, error)) (int64, error) {
	var total int64
	for {
		limit, err := r.wait()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		n, werr := write(limit)
		r.off += n
		total += n
		if werr != nil {
			return total, werr
		}
		if n == 0 {
			return total, io.ErrUnexpectedEOF
		}
	}
}

func (r *fillReader) Close() error {
	if !r.closed {
		r.closed = true
		r.f.release()
		if r.onClose != nil {
			r.onClose()
		}
	}
	return nil
}
