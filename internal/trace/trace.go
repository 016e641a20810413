// Package trace carries request-scoped facts through a context: the request
// id that lets one pull be followed through serve, NATS and a worker, and
// once-per-request markers.
package trace

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
)

type key struct{}

type state struct {
	id   string
	mu   sync.Mutex
	once map[string]bool
}

// WithRequestID returns ctx carrying id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, key{}, &state{id: id})
}

// RequestID returns the request id in ctx, or "".
func RequestID(ctx context.Context) string {
	if s, ok := ctx.Value(key{}).(*state); ok {
		return s.id
	}
	return ""
}

// Once reports whether this is the first call with name in the request of
// ctx. Without a request in ctx every call is the first.
func Once(ctx context.Context, name string) bool {
	s, ok := ctx.Value(key{}).(*state)
	if !ok {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.once[name] {
		return false
	}
	if s.once == nil {
		s.once = map[string]bool{}
	}
	s.once[name] = true
	return true
}

// NewID returns a random 16-byte hex id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidID reports whether a client-supplied id is safe to log and echo:
// 1 to 64 characters of [A-Za-z0-9._-].
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
