package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
)

// StartEmbeddedNATS starts the in-process NATS server of `regwarm run`,
// with JetStream stored under the config's store_dir, and returns its
// client URL.
func StartEmbeddedNATS(cfg *config.Config, log *slog.Logger) (*server.Server, string, error) {
	host, portStr, err := net.SplitHostPort(cfg.NATS.Embedded.Listen)
	if err != nil {
		return nil, "", fmt.Errorf("nats.embedded.listen: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, "", fmt.Errorf("nats.embedded.listen: %w", err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: "regwarm-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.NATSStoreDir(),
		NoSigs:     true,
		MaxPayload: 2 << 20, // room for a 1 MiB bad message to be refused by a worker
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, "", fmt.Errorf("embedded NATS: %w", err)
	}
	s.SetLoggerV2(&natsLogger{log.With("component", "nats")}, false, false, false)
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, "", errors.New("embedded NATS did not start within 15s (is nats.embedded.listen free?)")
	}
	return s, s.ClientURL(), nil
}

// natsLogger sends the embedded server's warnings and errors to slog.
type natsLogger struct{ log *slog.Logger }

func (l *natsLogger) Noticef(string, ...any) {}
func (l *natsLogger) Debugf(string, ...any)  {}
func (l *natsLogger) Tracef(string, ...any)  {}
func (l *natsLogger) Warnf(f string, v ...any) {
	l.log.Warn("nats server", "message", fmt.Sprintf(f, v...))
}
func (l *natsLogger) Errorf(f string, v ...any) {
	l.log.Error("nats server", "message", fmt.Sprintf(f, v...))
}
func (l *natsLogger) Fatalf(f string, v ...any) {
	l.log.Error("nats server fatal", "message", fmt.Sprintf(f, v...))
}

// bus is a process's NATS connection with the JetStream objects regwarm
// uses. Setup runs in the background until it succeeds, so a process
// starts (and serve keeps serving) while NATS is unreachable.
type bus struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	subj  events.Subjects
	setup events.Setup
	log   *slog.Logger

	mu     sync.Mutex
	cons   jetstream.Consumer
	leases *events.Leases
	ready  chan struct{}
}

func newBus(url string, cfg *config.Config, name string, log *slog.Logger) (*bus, error) {
	nc, err := events.Connect(url, cfg.NATS, name, log, true)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	setup := events.SetupFor(cfg)
	return &bus{nc: nc, js: js, subj: setup.Subjects, log: log, ready: make(chan struct{}), setup: setup}, nil
}

// run applies the JetStream setup, retrying until it works or ctx ends.
func (b *bus) run(ctx context.Context, owner string) {
	wait := 250 * time.Millisecond
	for {
		// Short attempts: a 2.9 cluster may never answer a request made
		// while the stream is being created elsewhere; the next one does.
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		cons, kv, err := b.setup.Apply(actx, b.js)
		cancel()
		if err == nil {
			b.mu.Lock()
			b.cons, b.leases = cons, events.NewLeases(kv, owner)
			b.mu.Unlock()
			close(b.ready)
			b.log.Info("nats ready", "stream", b.subj.Stream(), "consumer", b.subj.Consumer())
			return
		}
		b.log.Warn("nats setup failed; retrying", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// reapply runs the setup once more (a consumer or stream deleted behind
// regwarm's back is created again) and keeps the new consumer.
func (b *bus) reapply(ctx context.Context) {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cons, _, err := b.setup.Apply(actx, b.js)
	if err != nil {
		b.log.Warn("nats setup failed", "error", err)
		return
	}
	b.mu.Lock()
	b.cons = cons
	b.mu.Unlock()
}

func (b *bus) consumer() jetstream.Consumer {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cons
}

// errNotReady is returned by lease calls before setup finished.
var errNotReady = errors.New("nats not ready")

// Acquire implements cache.Leaser; it fails fast when NATS is not ready.
func (b *bus) Acquire(ctx context.Context, key string) (func(), bool, error) {
	l := b.leaseService()
	if l == nil || !b.nc.IsConnected() {
		return nil, false, errNotReady
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return l.Acquire(ctx, key)
}

// Held implements cache.Leaser.
func (b *bus) Held(ctx context.Context, key string) (bool, error) {
	l := b.leaseService()
	if l == nil || !b.nc.IsConnected() {
		return false, errNotReady
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return l.Held(ctx, key)
}

func (b *bus) leaseService() *events.Leases {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.leases
}

func (b *bus) close() {
	if err := b.nc.Drain(); err != nil {
		b.nc.Close()
	}
}
