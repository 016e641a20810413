package events

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Outcome is what RequestSyncs learned about one image.
type Outcome struct {
	Image  string
	Seq    uint64     // 0 when the request could not be queued
	Result SyncResult // zero until a worker answered
	Err    error      // queueing failed, or ctx ended before the result
	Done   bool       // the worker reported success
}

// RequestSyncs queues a sync job per request, with a reply subject, and
// waits until each job reports its outcome or ctx ends. queued is called
// as each job is accepted, finished as each result arrives.
func RequestSyncs(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, subj Subjects, reqs []SyncRequest,
	queued func(Outcome), finished func(Outcome)) ([]Outcome, error) {
	inbox := nc.NewInbox()
	results := make(chan *nats.Msg, len(reqs)+16)
	sub, err := nc.ChanSubscribe(inbox, results)
	if err != nil {
		return nil, fmt.Errorf("subscribing to results: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	out := make([]Outcome, len(reqs))
	bySeq := map[uint64]int{}
	pending := 0
	for i, r := range reqs {
		out[i].Image = r.Image
		data, err := json.Marshal(r)
		if err != nil {
			out[i].Err = err
			continue
		}
		msg := nats.NewMsg(subj.Sync())
		msg.Data = data
		msg.Header.Set(ReplyHeader, inbox)
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			out[i].Err = fmt.Errorf("queueing: %w", err)
			continue
		}
		out[i].Seq = ack.Sequence
		bySeq[ack.Sequence] = i
		pending++
		if queued != nil {
			queued(out[i])
		}
	}
	for pending > 0 {
		select {
		case <-ctx.Done():
			for i := range out {
				if out[i].Seq != 0 && out[i].Result.Seq == 0 && out[i].Err == nil {
					out[i].Err = fmt.Errorf("no result: %w", ctx.Err())
				}
			}
			return out, nil
		case m := <-results:
			var res SyncResult
			if json.Unmarshal(m.Data, &res) != nil {
				continue
			}
			i, ok := bySeq[res.Seq]
			if !ok || out[i].Result.Seq != 0 {
				continue
			}
			out[i].Result = res
			out[i].Done = res.Error == ""
			pending--
			if finished != nil {
				finished(out[i])
			}
		}
	}
	return out, nil
}
