package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
)

// NATSURL is the URL a CLI verb uses: the override, nats.url, or the
// embedded server's address.
func NATSURL(cfg *config.Config, override string) string {
	switch {
	case override != "":
		return override
	case cfg.NATS.URL != "":
		return cfg.NATS.URL
	}
	return "nats://" + cfg.NATS.Embedded.Listen
}

// Client connects a CLI verb named name to the NATS of a running
// deployment at url, with cfg's credentials (the embedded server's
// password when url is that server), and sets up the work stream if it is
// missing. The caller closes the connection.
func Client(ctx context.Context, cfg *config.Config, url, name string) (*nats.Conn, jetstream.JetStream, events.Subjects, error) {
	var auth []nats.Option
	if a := embeddedAuth(cfg, url); a != nil {
		auth = append(auth, a)
	}
	setup := natsSetup(cfg)
	nc, err := events.Connect(url, natsConnAuth(cfg.NATS), name, slog.New(slog.DiscardHandler), false, auth...)
	if err != nil {
		return nil, nil, setup.Subjects, err
	}
	js, err := jetstream.New(nc)
	if err == nil {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, _, err = setup.Apply(sctx, js)
		cancel()
	}
	if err != nil {
		nc.Close()
		return nil, nil, setup.Subjects, err
	}
	return nc, js, setup.Subjects, nil
}
