package connector

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/store"
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

// Sentinel errors; an *Error wraps one of them where it applies. Their
// fault kinds: an upstream that sends content not matching its digest is
// unavailable (its fault, not the client's).
var (
	ErrNotFound  = fault.New(fault.NotFound, "not found upstream")
	ErrExcluded  = fault.New(fault.NotFound, "repository excluded by connector filters")
	ErrMismatch  = fault.New(fault.Unavailable, "upstream content does not match its digest")
	ErrRateLimit = fault.New(fault.RateLimited, "upstream rate limit")
	// ErrRefused is an upstream request regwarm will not make: plain HTTP
	// from an https connector, or a redirect or token realm into a private
	// address range from a connector that does not live there. Retrying
	// cannot help, so its kind is fault.Denied.
	ErrRefused = fault.New(fault.Denied, "upstream request refused")
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
	Excluded   bool // the repository is filtered out by include/exclude (no request made, Status 0)
	Err        error
}

// FaultKind maps the failure into the project's error kinds: 404 and
// excluded repositories are NotFound, 401/403 Denied, 429 RateLimited, and
// anything else (5xx, no answer, a lying upstream) Unavailable.
func (e *Error) FaultKind() fault.Kind {
	switch {
	case e.Excluded, e.Status == http.StatusNotFound, errors.Is(e.Err, ErrNotFound):
		return fault.NotFound
	case e.Status == http.StatusUnauthorized, e.Status == http.StatusForbidden, errors.Is(e.Err, ErrRefused):
		return fault.Denied
	case e.Status == http.StatusTooManyRequests, errors.Is(e.Err, ErrRateLimit):
		return fault.RateLimited
	}
	return fault.Unavailable
}

// Is matches e's fault kind, and store.ErrNameUnknown for an excluded
// repository (to its clients the repository does not exist).
func (e *Error) Is(target error) bool {
	if k, ok := target.(fault.Kind); ok {
		return k == e.FaultKind()
	}
	return e.Excluded && target == store.ErrNameUnknown
}

// RetryDelay returns the upstream's Retry-After (fault.RetryAfter reads it).
func (e *Error) RetryDelay() time.Duration { return e.RetryAfter }

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

// IsNotFound reports whether err says the content does not exist upstream
// (or the repository is excluded by the connector's filters).
func IsNotFound(err error) bool {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.FaultKind() == fault.NotFound
	}
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrExcluded)
}

// IsTemporary reports whether err is worth retrying later.
func IsTemporary(err error) bool {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Temporary
	}
	return false
}
