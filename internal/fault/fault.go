// Package fault is regwarm's one small set of error kinds. Every package's
// sentinel errors map into a Kind (they match it with errors.Is), and the
// API's error table and the worker's ack switch read only the Kind:
//
//	var ErrBlobUnknown = fault.New(fault.NotFound, "blob unknown")
//	errors.Is(fmt.Errorf("open: %w", ErrBlobUnknown), fault.NotFound) // true
//	fault.Of(err)                                                     // fault.NotFound
//
// A fault of ours (corrupt stored content, a failed disk) is never a
// client error.
package fault

import (
	"context"
	"errors"
	"time"
)

// Kind is a class of failure. A Kind is itself an error, so errors.Is(err,
// fault.NotFound) asks for the kind of err.
type Kind int

// The kinds. Internal is the zero value's meaning too: an error of no known
// kind is treated as our fault.
const (
	Internal    Kind = iota // a fault of ours with no better kind
	NotFound                // the thing asked for does not exist (or is not visible)
	Invalid                 // the request or message is malformed: retrying cannot help
	Corrupt                 // stored content fails its digest: a fault of ours
	Denied                  // the caller or we may not have it
	RateLimited             // try again later, maybe after a Retry-After
	Unavailable             // a dependency (upstream, NATS, disk) is failing: retry later
)

var names = [...]string{"internal", "not found", "invalid", "corrupt", "denied", "rate limited", "unavailable"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(names) {
		return "internal"
	}
	return names[k]
}

// Error makes a Kind usable as an errors.Is target (and as an error).
func (k Kind) Error() string { return k.String() }

// FaultKind returns k, so that a Kind returned as an error has its kind.
func (k Kind) FaultKind() Kind { return k }

// Client reports whether the kind blames the caller (so a retry of the same
// request cannot succeed): NotFound, Invalid and Denied.
func (k Kind) Client() bool { return k == NotFound || k == Invalid || k == Denied }

// kinded is an error that knows its kind.
type kinded interface {
	error
	FaultKind() Kind
}

// Of returns the kind of err: that of the outermost error in its chain that
// knows its kind; a cancelled or expired context is Unavailable; anything
// else is Internal. Of(nil) is Internal; check err != nil first.
func Of(err error) Kind {
	if k, ok := errors.AsType[kinded](err); ok {
		return k.FaultKind()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Unavailable
	}
	return Internal
}

// sentinel is an error of a fixed kind.
type sentinel struct {
	msg  string
	kind Kind
}

func (s *sentinel) Error() string   { return s.msg }
func (s *sentinel) FaultKind() Kind { return s.kind }

// Is matches the sentinel's kind.
func (s *sentinel) Is(target error) bool { k, ok := target.(Kind); return ok && k == s.kind }

// New returns a sentinel error with text msg and kind k. Each is distinct:
// errors.Is(New(k, "a"), New(k, "a")) is false, errors.Is(New(k, "a"), k) true.
func New(k Kind, msg string) error { return &sentinel{msg: msg, kind: k} }

// retryer is an error that carries a server's Retry-After.
type retryer interface {
	error
	RetryDelay() time.Duration
}

// RetryAfter returns the delay an error in err's chain asks to wait before
// retrying (an upstream's Retry-After), or 0.
func RetryAfter(err error) time.Duration {
	if r, ok := errors.AsType[retryer](err); ok {
		return r.RetryDelay()
	}
	return 0
}
