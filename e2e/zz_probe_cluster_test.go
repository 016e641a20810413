package e2e

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/events"
)

func TestZZProbeClusterSetup(t *testing.T) {
	url := os.Getenv("PROBE_URL")
	if url == "" {
		t.Skip()
	}
	for _, n := range []int{1, 2} {
		prefix := "p" + time.Now().Format("150405") + string(rune('a'+n))
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				nc, err := nats.Connect(url)
				if err != nil {
					t.Error(err)
					return
				}
				defer nc.Close()
				js, _ := jetstream.New(nc)
				s := events.Setup{Subjects: events.Subjects{Prefix: prefix}, Replicas: 3, MaxDeliveries: 5, AckWait: 10 * time.Second}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err = js.CreateOrUpdateStream(ctx, s.StreamConfig())
				t.Logf("n=%d client %d stream: %v after %s", n, i, err, time.Since(start))
				_, _, err = s.Apply(ctx, js)
				t.Logf("n=%d client %d apply: %v after %s", n, i, err, time.Since(start))
			}()
		}
		wg.Wait()
	}
}
