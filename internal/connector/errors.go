package connector

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Kind says what was being fetched.
type Kind string

// Kinds of upstream requests.
const (
	KindManifest  Kind = "manifest"
	KindBlob      Kind = "blob"
	KindTags      Kind = "tags"
	KindReferrers Kind = "referrers"
)

// Sentinel errors; an *Error wraps one of them where it applies.
var (
	ErrNotFound  = errors.New("not found upstream")
	ErrExcluded  = errors.New("repository excluded by connector filters")
	ErrMismatch  = errors.New("upstream content does not match its digest")
	ErrRateLimit = errors.New("upstream rate limit")
	// ErrRefused is an upstream request regwarm will not make: plain HTTP
	// from an https connector, or a redirect or token realm into a private
	// address range from a connector that does not live there.
	ErrRefused = errors.New("upstream request refused")
)

// Error is the one error type returned at the connector boundary. It never
// contains credentials; Message is capped.
type Error struct {
	Connector  string
	Kind       Kind
	Status     int      // HTTP status, 0 when no response was received
	Codes      []string // OCI error codes from the response body
	Message    string   // short, capped, redacted
	RetryAfter time.Duration
	Temporary  bool // worth retrying later
	Excluded   bool // the repository is filtered out by include/exclude
	Err        error
}

func (e *Error) Error() string {
	s := "connector " + e.Connector + ": " + string(e.Kind)
	if e.Status != 0 {
		s += fmt.Sprintf(": status %d", e.Status)
	}
	if len(e.Codes) > 0 {
		s += fmt.Sprintf(" %v", e.Codes)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// IsNotFound reports whether err says the content does not exist upstream.
func IsNotFound(err error) bool {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Status == http.StatusNotFound || errors.Is(ce.Err, ErrNotFound)
	}
	return errors.Is(err, ErrNotFound)
}

// IsTemporary reports whether err is worth retrying later.
func IsTemporary(err error) bool {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Temporary
	}
	return false
}
