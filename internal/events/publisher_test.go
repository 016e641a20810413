package events_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/metrics"
)

// runJetStream starts an in-process JetStream server and connects to it.
func runJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func miss(repo string) events.MissEvent {
	return events.MissEvent{Registry: "hub", Repository: repo, Reference: "v1", Digest: "sha256:" + repo, Kind: "manifest", Connector: "up"}
}

// TestPublisherDropsWhenFull: Miss never blocks; beyond the buffer events
// are dropped and counted; what was buffered reaches the stream once Run
// runs, and a failed publish (no stream yet) is retried, not lost.
func TestPublisherDropsWhenFull(t *testing.T) {
	js := runJetStream(t)
	subj := events.Subjects{Prefix: "h8test"}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	p := events.NewPublisher(js, subj, slog.New(slog.DiscardHandler), m, 3)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 {
			p.Miss(miss(string(rune('a' + i))))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Miss blocked with nobody publishing")
	}
	if n := testutil.ToFloat64(m.EventsPublished.WithLabelValues(metrics.ResultDropped)); n != 7 {
		t.Errorf("dropped %v events, want 7", n)
	}
	if n := testutil.ToFloat64(m.EventBufferDepth); n != 3 {
		t.Errorf("buffer depth %v, want 3", n)
	}

	// No stream yet: publishing fails and is retried.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() { defer close(ran); p.Run(ctx) }()
	waitFor(t, "a failed publish", func() bool {
		return testutil.ToFloat64(m.EventsPublished.WithLabelValues(metrics.ResultError)) > 0
	})

	setup := events.Setup{Subjects: subj, MaxDeliveries: 3, AckWait: time.Minute}
	if _, _, err := setup.Apply(ctx, js); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "three published events", func() bool {
		return testutil.ToFloat64(m.EventsPublished.WithLabelValues(metrics.ResultOK)) == 3
	})
	// A repeated miss of the same content is one message in the stream.
	p.Miss(miss("a"))
	waitFor(t, "the repeated event", func() bool {
		return testutil.ToFloat64(m.EventsPublished.WithLabelValues(metrics.ResultOK)) == 4
	})
	st, err := js.Stream(ctx, subj.Stream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Errorf("stream holds %d messages, want 3", info.State.Msgs)
	}
	msg, err := st.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	var ev events.MissEvent
	err = json.Unmarshal(msg.Data, &ev)
	if err != nil || ev.Repository != "a" || msg.Subject != subj.Miss("hub") {
		t.Errorf("first message %s %q: %+v %v", msg.Subject, msg.Data, ev, err)
	}
	cancel()
	<-ran
}
