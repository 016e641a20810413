package fault_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/fault"
)

type retry struct{ d time.Duration }

func (r retry) Error() string             { return "retry" }
func (r retry) FaultKind() fault.Kind     { return fault.RateLimited }
func (r retry) RetryDelay() time.Duration { return r.d }
func (r retry) Is(target error) bool      { return target == fault.RateLimited }

func TestOf(t *testing.T) {
	notFound := fault.New(fault.NotFound, "blob unknown")
	corrupt := fault.New(fault.Corrupt, "corrupt")
	invalid := fault.New(fault.Invalid, "digest mismatch")
	for _, tt := range []struct {
		name string
		err  error
		want fault.Kind
	}{
		{"sentinel", notFound, fault.NotFound},
		{"wrapped", fmt.Errorf("open: %w", notFound), fault.NotFound},
		{"outermost of two wins", fmt.Errorf("%w: %w", corrupt, invalid), fault.Corrupt},
		{"typed error", fmt.Errorf("x: %w", retry{time.Second}), fault.RateLimited},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), fault.Unavailable},
		{"deadline", context.DeadlineExceeded, fault.Unavailable},
		{"plain", errors.New("disk on fire"), fault.Internal},
		{"a kind returned as an error", fmt.Errorf("x: %w", fault.Denied), fault.Denied},
	} {
		if got := fault.Of(tt.err); got != tt.want {
			t.Errorf("%s: Of = %v, want %v", tt.name, got, tt.want)
		}
		if tt.want != fault.Internal && tt.want != fault.Unavailable && !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: errors.Is(err, %v) is false", tt.name, tt.want)
		}
	}
	if errors.Is(notFound, fault.Invalid) {
		t.Error("a NotFound sentinel matches Invalid")
	}
	if errors.Is(notFound, fault.New(fault.NotFound, "blob unknown")) {
		t.Error("two sentinels with the same text match")
	}
}

func TestRetryAfter(t *testing.T) {
	if d := fault.RetryAfter(fmt.Errorf("get: %w", retry{3 * time.Second})); d != 3*time.Second {
		t.Errorf("RetryAfter = %v, want 3s", d)
	}
	if d := fault.RetryAfter(errors.New("x")); d != 0 {
		t.Errorf("RetryAfter of a plain error = %v", d)
	}
}

func TestClient(t *testing.T) {
	for k, want := range map[fault.Kind]bool{
		fault.NotFound: true, fault.Invalid: true, fault.Denied: true,
		fault.Corrupt: false, fault.RateLimited: false, fault.Unavailable: false, fault.Internal: false,
	} {
		if k.Client() != want {
			t.Errorf("%v.Client() = %v, want %v", k, k.Client(), want)
		}
	}
}
