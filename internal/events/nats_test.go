package events

import (
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                     "nats://127.0.0.1:4222",
		"nats://bob:s3cret@a:4222":                  "nats://***@a:4222",
		"nats://tok3n@a:4222, tls://u:p@b:4222,c:1": "nats://***@a:4222,tls://***@b:4222,c:1",
		"u:p@host:4222":                             "***@host:4222",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestConnectNamesURLAndCause: a refused connection names the URL, without
// its credentials, and the dial error instead of "no servers available".
func TestConnectNamesURLAndCause(t *testing.T) {
	t.Parallel()
	_, err := Connect("nats://bob:s3cret@127.0.0.1:1", Auth{}, "test", slog.New(slog.DiscardHandler), false)
	if err == nil {
		t.Fatal("connected to port 1")
	}
	msg := err.Error()
	if !strings.Contains(msg, "nats://***@127.0.0.1:1") || strings.Contains(msg, "s3cret") || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error %q: want the redacted URL and connection refused", msg)
	}
}
