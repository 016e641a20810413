package events

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/metrics"
)

// Publisher publishes miss events from the pull path. Publish never
// blocks: events wait in a bounded buffer while NATS is slow or down and
// are dropped, and counted, when it is full.
type Publisher struct {
	js      jetstream.JetStream
	subj    Subjects
	log     *slog.Logger
	metrics *metrics.Set
	ch      chan MissEvent
}

// DefaultBuffer is how many events wait for NATS before new ones are dropped.
const DefaultBuffer = 10_000

// NewPublisher returns a publisher with room for buffer waiting events.
// Run must be running for events to leave.
func NewPublisher(js jetstream.JetStream, subj Subjects, log *slog.Logger, m *metrics.Set, buffer int) *Publisher {
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	return &Publisher{js: js, subj: subj, log: log, metrics: m, ch: make(chan MissEvent, buffer)}
}

// Miss queues a miss event. It returns at once; encoding happens in Run.
func (p *Publisher) Miss(ev MissEvent) {
	select {
	case p.ch <- ev:
		p.metrics.EventBufferDepth.Set(float64(len(p.ch)))
	default:
		p.metrics.EventsPublished.WithLabelValues(metrics.ResultDropped).Inc()
	}
}

// Run publishes queued events until ctx ends. A failed publish is retried
// with backoff, so events survive a NATS outage up to the buffer size.
func (p *Publisher) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		var ev MissEvent
		select {
		case <-ctx.Done():
			return
		case ev = <-p.ch:
		}
		p.metrics.EventBufferDepth.Set(float64(len(p.ch)))
		msg, err := p.message(ev)
		if err != nil {
			p.metrics.EventsPublished.WithLabelValues(metrics.ResultDropped).Inc()
			continue
		}
		for {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := p.js.PublishMsg(pctx, msg)
			cancel()
			if err == nil {
				p.metrics.EventsPublished.WithLabelValues(metrics.ResultOK).Inc()
				backoff = 100 * time.Millisecond
				break
			}
			if ctx.Err() != nil {
				return // shutting down: not a NATS problem
			}
			p.metrics.EventsPublished.WithLabelValues(metrics.ResultError).Inc()
			if nc := p.js.Conn(); nc != nil && !nc.IsConnected() {
				// nats.go says "headers not supported" before a first connection.
				err = errNotConnected
			}
			if backoff == 100*time.Millisecond {
				p.log.Warn("publishing miss event failed; retrying", "subject", msg.Subject, "error", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// errNotConnected replaces the error of a publish while NATS is unreachable.
var errNotConnected = errors.New("not connected to NATS")

// message encodes a miss event for the work stream.
func (p *Publisher) message(ev MissEvent) (*nats.Msg, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(p.subj.Miss(ev.Registry))
	msg.Data = data
	// Repeated misses of the same content within the stream's duplicate
	// window become one job.
	msg.Header.Set(jetstream.MsgIDHeader, "miss:"+ev.Kind+":"+ev.Registry+"/"+ev.Repository+"@"+ev.Digest)
	if ev.RequestID != "" {
		msg.Header.Set(RequestIDHeader, ev.RequestID)
	}
	return msg, nil
}
