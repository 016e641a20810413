package harness

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// recorder is a testing.TB that keeps its cleanups and errors, so that a
// test can see what a helper reports when its test ends.
type recorder struct {
	testing.TB
	cleanups []func()
	errors   []string
}

func (r *recorder) Helper()          {}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(f, args...))
}

func TestMsgLog(t *testing.T) {
	t.Parallel()
	type event struct {
		Subject string `json:"-"`
		N       int    `json:"n"`
	}
	rec := &recorder{TB: t}
	l := NewMsgLog(rec, "test event", func(m *nats.Msg, e *event) { e.Subject = m.Subject })
	h := l.Handler()
	h(&nats.Msg{Subject: "e.1", Data: []byte(`{"n": 1}`)})
	h(&nats.Msg{Subject: "e.2", Data: []byte(`not JSON`)})
	h(&nats.Msg{Subject: "e.3", Data: []byte(`{"n": 3}`)})
	if got, want := l.All(), []event{{"e.1", 1}, {"e.3", 3}}; !slices.Equal(got, want) {
		t.Errorf("All() = %+v, want %+v", got, want)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		h(&nats.Msg{Subject: "e.4", Data: []byte(`{"n": 4}`)})
	}()
	if got := l.Wait(t, 10*time.Second, "event 4", func(e event) bool { return e.N == 4 }); got.Subject != "e.4" {
		t.Errorf("Wait for n=4 = %+v, want subject e.4", got)
	}
	if len(rec.errors) != 0 {
		t.Errorf("errors before the test ended: %q", rec.errors)
	}
	for _, f := range rec.cleanups {
		f()
	}
	if len(rec.errors) != 1 || !strings.HasPrefix(rec.errors[0], "undecodable test event e.2: ") {
		t.Errorf("errors at the end: %q, want one for the undecodable e.2", rec.errors)
	}
}
