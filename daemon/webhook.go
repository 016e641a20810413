package daemon

import (
	"context"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/webhook"
)

// webhookQueue publishes a webhook's sync jobs to the work stream, with
// the job id as JetStream's deduplication id.
type webhookQueue struct {
	js      jetstream.JetStream
	subject string
}

var _ webhook.Queue = webhookQueue{}

func (q webhookQueue) Sync(ctx context.Context, image, id string) (bool, error) {
	ack, err := q.js.Publish(ctx, q.subject, []byte(image), jetstream.WithMsgID(id))
	if err != nil {
		return false, err
	}
	return ack.Duplicate, nil
}

// withWebhooks routes POST /webhooks/<name> to the webhooks (before the
// registry API and its authentication: webhooks check their own secret)
// and everything else, untouched, to api.
func withWebhooks(api, hooks http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, webhook.PathPrefix) {
			hooks.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}
