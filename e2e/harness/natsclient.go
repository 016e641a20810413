package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSConn connects to url for the test's own use, with opts (such as
// nats.UserInfo). It reconnects forever, so it survives a server restart,
// and is closed by t.Cleanup.
func NATSConn(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream client on a new NATSConn to url.
func JetStream(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(NATSConn(t, url))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// EmbeddedNATSUser is the user regwarm's processes authenticate as on the
// embedded NATS server of `regwarm run`.
const EmbeddedNATSUser = "regwarm"

// NATSURL is the client URL of the embedded NATS server of a `regwarm run`.
func (r *Regwarm) NATSURL() string { return "nats://" + r.NATSAddr }

// NATSPassword returns the password regwarm generated for EmbeddedNATSUser
// into <data_dir>/nats-password.
func (r *Regwarm) NATSPassword() string {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(r.DataDir, "nats-password"))
	if err != nil {
		r.t.Fatalf("embedded NATS password: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// NATSConn connects the test to the embedded NATS server of a `regwarm
// run` as EmbeddedNATSUser, with the password from its data directory.
func (r *Regwarm) NATSConn() *nats.Conn {
	r.t.Helper()
	return NATSConn(r.t, r.NATSURL(), nats.UserInfo(EmbeddedNATSUser, r.NATSPassword()))
}

// MsgLog collects the messages a test receives on NATS, each decoded from
// JSON into a T. It is safe for concurrent use. A message that does not
// decode fails the test when it ends.
type MsgLog[T any] struct {
	noun string
	set  func(*nats.Msg, *T)

	mu   sync.Mutex
	msgs []T
	bad  []string
}

// NewMsgLog returns an empty log. noun names one message in failure
// output ("sync event"); set, when not nil, completes each decoded message
// from the NATS message it came in (with its subject, say).
func NewMsgLog[T any](t testing.TB, noun string, set func(*nats.Msg, *T)) *MsgLog[T] {
	l := &MsgLog[T]{noun: noun, set: set}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, b := range l.bad {
			t.Errorf("undecodable %s %s", noun, b)
		}
	})
	return l
}

// Handler returns a message handler that decodes and keeps each message.
func (l *MsgLog[T]) Handler() nats.MsgHandler {
	return func(m *nats.Msg) {
		var v T
		err := json.Unmarshal(m.Data, &v)
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.bad = append(l.bad, fmt.Sprintf("%s: %v: %q", m.Subject, err, m.Data))
			return
		}
		if l.set != nil {
			l.set(m, &v)
		}
		l.msgs = append(l.msgs, v)
	}
}

// Subscribe makes the log collect the messages on subject (wildcards
// allowed) that reach nc, and returns once the server has the
// subscription.
func (l *MsgLog[T]) Subscribe(t testing.TB, nc *nats.Conn, subject string) {
	t.Helper()
	_, err := nc.Subscribe(subject, l.Handler())
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatalf("subscribe to %s: %v", subject, err)
	}
}

// All returns the messages collected so far, in the order they arrived.
func (l *MsgLog[T]) All() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]T(nil), l.msgs...)
}

// Wait returns the first message that matches, polling until timeout;
// then it fails the test, listing the messages so far.
func (l *MsgLog[T]) Wait(t testing.TB, timeout time.Duration, what string, match func(T) bool) T {
	t.Helper()
	var found T
	Eventually(t, timeout, what, func() error {
		msgs := l.All()
		for _, m := range msgs {
			if match(m) {
				found = m
				return nil
			}
		}
		return fmt.Errorf("%d %ss so far: %+v", len(msgs), l.noun, msgs)
	})
	return found
}
