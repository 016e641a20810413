package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/e2e/harness"
)

func TestZZProbePullStall(t *testing.T) {
	for _, expiry := range []time.Duration{0, 0, 0, 5 * time.Second, 5 * time.Second, 5 * time.Second} {
		t.Run(fmt.Sprint(expiry), func(t *testing.T) {
			cl := harness.StartNATSCluster(t, 3)
			js := jetStream(t, cl.URL())
			ctx := context.Background()
			s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "P", Subjects: []string{"p"}, Retention: jetstream.WorkQueuePolicy, Replicas: 3})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 10 * time.Second, Replicas: 3})
			if err != nil {
				t.Fatal(err)
			}
			var jsz harness.JSZ
			var leader string
			harness.Eventually(t, 10*time.Second, "leader", func() error {
				if err := cl.Nodes[0].Monitor("jsz", &jsz); err != nil {
					return err
				}
				_, leader = jsz.Leaders("P", "c")
				if leader == "" {
					return fmt.Errorf("none")
				}
				return nil
			})
			victim := cl.Node(leader)
			wnc, _ := nats.Connect(victim.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
			defer wnc.Close()
			wjs, _ := jetstream.New(wnc)
			c, err := wjs.Consumer(ctx, "P", "c")
			if err != nil {
				t.Fatal(err)
			}
			opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(4)}
			if expiry > 0 {
				opts = append(opts, jetstream.PullExpiry(expiry))
			}
			iter, err := c.Messages(opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer iter.Stop()
			got := make(chan time.Time, 1000)
			go func() {
				for {
					m, err := iter.Next()
					if err != nil {
						if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
							return
						}
						t.Logf("next: %v", err)
						continue
					}
					m.Ack()
					got <- time.Now()
				}
			}()
			stop := make(chan struct{})
			go func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					pctx, cancel := context.WithTimeout(ctx, time.Second)
					js.Publish(pctx, "p", []byte("x"))
					cancel()
					time.Sleep(100 * time.Millisecond)
				}
			}()
			defer close(stop)
			time.Sleep(time.Second)
			victim.Kill()
			killed := time.Now()
			// drain those before the kill
			var first time.Time
			deadline := time.After(45 * time.Second)
		loop:
			for {
				select {
				case at := <-got:
					if at.After(killed.Add(50 * time.Millisecond)) {
						first = at
						break loop
					}
				case <-deadline:
					break loop
				}
			}
			t.Logf("expiry %v: killed leader %s, first message after %.2fs", expiry, leader, first.Sub(killed).Seconds())
		})
	}
}
