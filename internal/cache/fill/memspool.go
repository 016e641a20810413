package fill

import (
	"io"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Blobs of at most MemMax bytes stream through memory instead of a spool
// file, while no more than the memory budget (64 MiB by default) is held
// that way at once: the pull path then does no file I/O for them (a
// client's are written to the store write-behind, see Config.Later).
// Larger blobs, or any blob while the budget is spent, use the store's
// spool.
const (
	MemMax    = 16 << 20
	memBudget = 64 << 20
)

// budget counts bytes in memory spools against a limit (memBudget unless
// a test set another).
type budget struct {
	used  atomic.Int64
	limit int64
}

func (b *budget) max() int64 {
	if b.limit > 0 {
		return b.limit
	}
	return memBudget
}

// take reserves n bytes, or reports false when that would exceed the limit.
func (b *budget) take(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.max() {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *budget) give(n int64) { b.used.Add(-n) }

// memSpool is a blob received into memory. Bytes below the fill's written
// count never change, so readers may use them without copying.
type memSpool struct {
	buf     []byte
	mapped  bool // buf came from mapBuf, not from the pools
	release func()
	once    sync.Once
}

// Buffers of at least bigBuf bytes are mapped outside the Go heap (see
// bigbuf_linux.go), so they cost no garbage collection and go back to the
// system when the blob is stored; smaller ones come from pools.
const bigBuf = 1 << 20

func newMemSpool(size int64, b *budget) *memSpool {
	m := &memSpool{release: func() { b.give(size) }}
	if size >= bigBuf {
		m.buf, m.mapped = mapBuf(int(size))
	}
	if !m.mapped {
		m.buf = getBuf(int(size))
	}
	return m
}

func (m *memSpool) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.buf)) {
		return 0, io.EOF
	}
	n := copy(p, m.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Close returns the memory; readers must be done with it.
func (m *memSpool) Close() error {
	m.once.Do(func() {
		if m.mapped {
			unmapBuf(m.buf)
		} else {
			putBuf(m.buf)
		}
		m.release()
	})
	return nil
}

// memBufs pools heap buffers by power-of-two capacity.
var memBufs [bits.UintSize]sync.Pool

func bufClass(n int) int { return bits.Len(uint(max(n, 1) - 1)) }

func getBuf(n int) []byte {
	c := bufClass(n)
	if b, ok := memBufs[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<c)
}

func putBuf(b []byte) {
	c := bufClass(cap(b))
	if cap(b) != 1<<c {
		return
	}
	b = b[:cap(b)]
	memBufs[c].Put(&b)
}
