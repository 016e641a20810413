package registryapi

import (
	"crypto/rand"
	"encoding/hex"
)

// Every request has an id, the client's X-Request-Id when it is safe to
// log and echo, else a random one: it is answered in X-Request-Id, logged
// with the request's errors and carried into the miss events it causes,
// so one pull can be followed through serve, NATS and a worker.

// newID returns a random 16-byte hex id.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validID reports whether a client-supplied id is safe to log and echo:
// 1 to 64 characters of [A-Za-z0-9._-].
func validID(s string) bool {
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
