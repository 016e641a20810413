package fill

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// Key names a fill: one per registry and digest is in flight at a time.
type Key struct {
	Registry string
	Digest   digest.Digest
}

// Fill is one upstream blob download that any number of readers follow.
//
// Its life: started (a source answered: fetched, with the size and the
// body readers follow, when known) → every byte written → verified (the
// bytes hash to the digest: readers may have the last byte) → ended
// (stored, or failed: err). A fill that found the blob stored already
// (Job.Adopt) ends without starting.
//
// Lock order: the engine's mutex before Fill.mu (never held together in
// practice).
type Fill struct {
	repo   store.Repo    // the repository it stores into (others link it); fixed
	client bool          // started for a client (stored write-behind); fixed
	done   chan struct{} // closed once ended

	mu       sync.Mutex
	progress chan struct{} // closed and replaced whenever the state below changes
	fetched  bool          // started: the bytes come from upstream
	body     body          // what readers follow: the store's spool or memory (nil: none)
	size     int64         // -1 unless known
	written  int64         // bytes in body
	verified bool          // every byte is written and matches the digest
	ended    bool          // err is the result
	err      error
	readers  int  // open readers; the last one closes the body once ended
	handed   bool // a reader was given out: the source may not change under it
}

// body is what readers of a fill read while it arrives.
type body interface {
	io.ReaderAt
	io.Closer
}

func newFill(repo store.Repo) *Fill {
	return &Fill{repo: repo, done: make(chan struct{}), progress: make(chan struct{}), size: -1}
}

// Repo returns the repository the fill stores the blob into.
func (f *Fill) Repo() store.Repo { return f.repo }

// Client reports whether the fill was started for a client (Job.Client):
// its verified bytes are stored write-behind.
func (f *Fill) Client() bool { return f.client }

// WaitStarted blocks until Size and Reader can answer (the fill started
// or ended), or ctx ends (ctx's error).
func (f *Fill) WaitStarted(ctx context.Context) error {
	for {
		f.mu.Lock()
		ready, progress := f.fetched || f.ended, f.progress
		f.mu.Unlock()
		if ready {
			return nil
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Done is closed when the fill ended; Err then returns its result.
func (f *Fill) Done() <-chan struct{} { return f.done }

// Size returns the blob's size, or -1 while (or if) it is unknown.
func (f *Fill) Size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size
}

// Err returns the result of an ended fill (nil while it runs).
func (f *Fill) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Fetched reports whether the fill brought the bytes from upstream, rather
// than finding them stored (by another fill or process).
func (f *Fill) Fetched() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetched
}

// wakeLocked wakes the readers waiting for progress (f.mu held).
func (f *Fill) wakeLocked() {
	close(f.progress)
	f.progress = make(chan struct{})
}

// start gives readers a body of size bytes (a new source's, on a retry).
func (f *Fill) start(b body, size int64) {
	f.mu.Lock()
	f.body, f.size, f.written, f.fetched = b, size, 0, true
	f.wakeLocked()
	f.mu.Unlock()
}

func (f *Fill) advance(n int64) {
	f.mu.Lock()
	f.written += n
	f.wakeLocked()
	f.mu.Unlock()
}

// markVerified lets readers have the final byte.
func (f *Fill) markVerified() {
	f.mu.Lock()
	f.verified = true
	f.wakeLocked()
	f.mu.Unlock()
}

func (f *Fill) exposed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.handed
}

// finish ends the fill with err; fetched false says someone else stored it.
func (f *Fill) finish(err error, fetched bool) {
	f.mu.Lock()
	f.ended, f.err = true, err
	f.fetched = f.fetched && fetched
	f.wakeLocked()
	release := f.readers == 0 && f.body != nil
	f.mu.Unlock()
	if release {
		_ = f.body.Close()
	}
	close(f.done)
}

// Reader returns a reader following the blob as it arrives, unless there
// is none to follow (no body: the size was unknown, the blob was stored
// already, the fill failed or ended and let its body go); the caller then
// waits for Done and reads the store. cancel ends the reader's waits.
func (f *Fill) Reader(cancel <-chan struct{}) (*Reader, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.body == nil || f.size < 0 || (f.ended && f.err != nil) {
		return nil, false
	}
	if f.ended && f.readers == 0 {
		return nil, false // body already closed; the blob is in the store
	}
	f.readers++
	f.handed = true
	return &Reader{f: f, cancel: cancel}, true
}

func (f *Fill) release() {
	f.mu.Lock()
	f.readers--
	closeBody := f.readers == 0 && f.ended
	f.mu.Unlock()
	if closeBody {
		_ = f.body.Close()
	}
}

// Reader reads a blob while its fill writes it. It holds back the last
// byte until the fill verified the digest. It is a store.Blob, an
// io.Seeker and an io.WriterTo.
type Reader struct {
	f      *Fill
	off    int64
	cancel <-chan struct{}
	closed bool
}

var _ store.Blob = (*Reader)(nil)

// Size returns the blob's size.
func (r *Reader) Size() int64 { return r.f.size }

// wait blocks until bytes beyond r.off may be read and returns how far:
// everything written, less the last byte until the digest is verified.
// It returns io.EOF at the end and the fill's error if it failed.
func (r *Reader) wait() (int64, error) {
	f := r.f
	for {
		f.mu.Lock()
		written, ended, err, progress, size, verified := f.written, f.ended, f.err, f.progress, f.size, f.verified
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
		if ended {
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
func (r *Reader) WaitVerified(ctx context.Context) error {
	f := r.f
	for {
		f.mu.Lock()
		verified, ended, err, progress := f.verified, f.ended, f.err, f.progress
		f.mu.Unlock()
		switch {
		case verified:
			return nil
		case ended:
			if err == nil {
				err = errors.New("fill: blob fill ended unverified")
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
func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	default:
		return r.off, errors.New("fill: unsupported seek")
	}
	if offset < 0 || offset > r.f.size {
		return r.off, errors.New("fill: seek out of range")
	}
	r.off = offset
	return offset, nil
}

// Read reads what has arrived (and may be handed out) past the offset.
func (r *Reader) Read(p []byte) (int, error) {
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
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
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
func (r *Reader) writeEach(write func(limit int64) (int64, error)) (int64, error) {
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

// Close lets the fill's body go once the fill ended and every reader
// closed. It is safe to call twice.
func (r *Reader) Close() error {
	if !r.closed {
		r.closed = true
		r.f.release()
	}
	return nil
}
