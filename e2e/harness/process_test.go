package harness

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	t.Parallel()
	calls := 0
	err := Poll(10*time.Second, func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("Poll until the third call: %v after %d calls, want nil after 3", err, calls)
	}

	start := time.Now()
	err = Poll(50*time.Millisecond, func() error { return errors.New("never") })
	if err == nil || err.Error() != "never" || time.Since(start) < 50*time.Millisecond {
		t.Errorf("Poll of a failing cond: %v after %s, want its error after the 50ms timeout", err, time.Since(start))
	}

	calls = 0
	err = Poll(time.Minute, func() error { calls++; return errStop{errors.New("died")} })
	if err == nil || calls != 1 {
		t.Errorf("Poll of an errStop: %v after %d calls, want the error after 1", err, calls)
	}
}

func TestLastLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\n", 5, "a\nb"},
		{"a\n\n\n", 1, "a"},
		{"", 3, ""},
	} {
		if got := LastLines(tc.in, tc.n); got != tc.want {
			t.Errorf("LastLines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
	long := strings.Repeat("x", 500)
	if got, want := tail("a\nb\n"+long+"\n", 2), "b\n"+long[:400]+" …"; got != want {
		t.Errorf("tail cuts long lines: got %q, want %q", got, want)
	}
}
