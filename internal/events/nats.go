package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Auth is how a connection to NATS authenticates: a credentials file, or
// a user and password, and the TLS files. The zero Auth is anonymous,
// without client TLS.
type Auth struct {
	CredentialsFile string
	Username        string
	Password        string
	CAFile          string // trusted roots for the server's certificate
	CertFile        string // client certificate, with KeyFile
	KeyFile         string
}

// Connect opens a NATS connection to url with auth, then extra options. It keeps reconnecting forever once
// connected; with retryOnFailedConnect it also starts without a reachable
// server. A failure names the URL (without credentials) and the cause.
func Connect(url string, c Auth, name string, log *slog.Logger, retryOnFailedConnect bool, extra ...nats.Option) (*nats.Conn, error) {
	dialer := &dialRecorder{d: net.Dialer{Timeout: 5 * time.Second}}
	opts := []nats.Option{
		nats.SetCustomDialer(dialer),
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted()) }),
	}
	if retryOnFailedConnect {
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	if c.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredentialsFile))
	}
	if c.Username != "" {
		opts = append(opts, nats.UserInfo(c.Username, c.Password))
	}
	if c.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.CAFile))
	}
	if c.CertFile != "" {
		opts = append(opts, nats.ClientCert(c.CertFile, c.KeyFile))
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		if de := dialer.lastErr(); de != nil && errors.Is(err, nats.ErrNoServers) {
			err = de
		}
		return nil, fmt.Errorf("connecting to NATS at %s: %w", RedactURL(url), err)
	}
	return nc, nil
}

// dialRecorder dials NATS servers and remembers the last failure, which
// nats.go reports only as "no servers available".
type dialRecorder struct {
	d    net.Dialer
	mu   sync.Mutex
	last error
}

// Dial implements nats.CustomDialer.
func (r *dialRecorder) Dial(network, address string) (net.Conn, error) {
	c, err := r.d.Dial(network, address)
	if err != nil {
		r.mu.Lock()
		r.last = err
		r.mu.Unlock()
	}
	return c, err
}

func (r *dialRecorder) lastErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// RedactURL returns a NATS URL (or a comma-separated list) with any user
// information (user, password, token) replaced by "***".
func RedactURL(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if at := strings.LastIndex(p, "@"); at >= 0 {
			scheme := ""
			if j := strings.Index(p, "://"); j >= 0 && j < at {
				scheme = p[:j+3]
			}
			p = scheme + "***" + p[at:]
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}

// Setup creates or updates, idempotently, the work stream, the workers'
// durable consumer and the lease bucket. Any process may call it at start.
type Setup struct {
	Subjects      Subjects
	Replicas      int
	MaxDeliveries int
	AckWait       time.Duration
}

// StreamConfig is the work stream: sync requests and misses, kept until a
// worker acknowledges them.
func (s Setup) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        s.Subjects.Stream(),
		Description: "regwarm sync requests and cache misses, kept until a worker has done them",
		Subjects:    []string{s.Subjects.Sync(), s.Subjects.Misses()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(s.Replicas, 1),
		MaxMsgs:     1_000_000,
		MaxBytes:    1 << 30,
		MaxMsgSize:  -1, // the server's max_payload; oversized requests are refused by workers
		MaxAge:      7 * 24 * time.Hour,
		Discard:     jetstream.DiscardOld,
		Duplicates:  2 * time.Minute,
	}
}

// ConsumerConfig is the workers' shared durable pull consumer.
func (s Setup) ConsumerConfig() jetstream.ConsumerConfig {
	ack := s.AckWait
	if ack <= 0 {
		ack = time.Minute
	}
	return jetstream.ConsumerConfig{
		Durable:       s.Subjects.Consumer(),
		Description:   "regwarm workers",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ack,
		MaxDeliver:    max(s.MaxDeliveries, 1),
		MaxAckPending: 10_000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		Replicas:      max(s.Replicas, 1),
	}
}

// LeaseTTL is how long a lease lives without being refreshed.
const LeaseTTL = 15 * time.Second

// Apply creates or updates everything and returns the consumer and the
// lease bucket.
func (s Setup) Apply(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, jetstream.KeyValue, error) {
	stream, err := js.CreateOrUpdateStream(ctx, s.StreamConfig())
	if err != nil {
		return nil, nil, fmt.Errorf("creating stream %s: %w", s.Subjects.Stream(), err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, s.ConsumerConfig())
	if err != nil {
		return nil, nil, fmt.Errorf("creating consumer %s: %w", s.Subjects.Consumer(), err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      s.Subjects.LeaseBucket(),
		Description: "regwarm leases: one upstream fetch per blob, one run per job tick",
		TTL:         LeaseTTL,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(s.Replicas, 1),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("creating lease bucket: %w", err)
	}
	return cons, kv, nil
}
