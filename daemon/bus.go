package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
)

// StartEmbeddedNATS starts the in-process NATS server of `regwarm run`,
// with JetStream stored under the config's store_dir, and returns it with
// its client URL and the option regwarm's own connections authenticate
// with (user regwarm, the password in <data_dir>/nats-password). A server
// that cannot start (busy port, unwritable store) fails at once with the
// server's own error.
func StartEmbeddedNATS(cfg *config.Config, log *slog.Logger) (*server.Server, string, nats.Option, error) {
	host, portStr, err := net.SplitHostPort(cfg.NATS.Embedded.Listen)
	if err != nil {
		return nil, "", nil, fmt.Errorf("nats.embedded.listen: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, "", nil, fmt.Errorf("nats.embedded.listen: %w", err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	password, err := embeddedPassword(cfg)
	if err != nil {
		return nil, "", nil, err
	}
	authConf, err := embeddedAuthConfig(cfg, password)
	if err != nil {
		return nil, "", nil, err
	}
	if err := migrateGlobalAccount(cfg.NATSStoreDir()); err != nil {
		return nil, "", nil, err
	}
	opts := &server.Options{}
	if err := opts.ProcessConfigString(authConf); err != nil {
		return nil, "", nil, fmt.Errorf("embedded NATS: auth config: %w", err)
	}
	opts.ServerName = "regwarm-embedded"
	opts.Host = host
	opts.Port = port
	opts.JetStream = true
	opts.StoreDir = cfg.NATSStoreDir()
	opts.NoSigs = true
	opts.MaxPayload = 2 << 20 // room for a 1 MiB bad message to be refused by a worker
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, "", nil, fmt.Errorf("embedded NATS: %w", err)
	}
	fatal := make(chan string, 1)
	nl := &natsLogger{log: log.With("component", "nats"), fatal: fatal}
	s.SetLoggerV2(nl, false, false, false)
	go s.Start()
	deadline := time.Now().Add(15 * time.Second)
	for !s.ReadyForConnections(50 * time.Millisecond) {
		select {
		case msg := <-fatal:
			s.Shutdown()
			return nil, "", nil, fmt.Errorf("embedded NATS on %s (store %s): %s", cfg.NATS.Embedded.Listen, cfg.NATSStoreDir(), msg)
		default:
		}
		if time.Now().After(deadline) {
			s.Shutdown()
			return nil, "", nil, fmt.Errorf("embedded NATS on %s did not start within 15s", cfg.NATS.Embedded.Listen)
		}
	}
	nl.started()
	return s, s.ClientURL(), nats.UserInfo(EmbeddedUser, password), nil
}

// migrateGlobalAccount moves the JetStream data an older regwarm kept in
// the embedded server's global account ($G) into natsAccount, so queued
// jobs survive the upgrade.
func migrateGlobalAccount(storeDir string) error {
	dir := filepath.Join(storeDir, "jetstream")
	from, to := filepath.Join(dir, "$G"), filepath.Join(dir, natsAccount)
	if _, err := os.Stat(to); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Stat(from); err != nil {
		return nil
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("embedded NATS: moving %s to %s: %w", from, to, err)
	}
	return nil
}

// natsLogger sends the embedded server's warnings and errors to slog, and
// hands the first fatal error to whoever waits for the server to start.
type natsLogger struct {
	log *slog.Logger

	mu    sync.Mutex
	fatal chan<- string // nil once the server started
}

func (l *natsLogger) Noticef(string, ...any) {}
func (l *natsLogger) Debugf(string, ...any)  {}
func (l *natsLogger) Tracef(string, ...any)  {}
func (l *natsLogger) Warnf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	if strings.HasPrefix(msg, "Plaintext passwords detected") {
		return // the generated password, kept in a 0600 file and in memory
	}
	l.log.Warn("nats server", "message", msg)
}
func (l *natsLogger) Errorf(f string, v ...any) {
	l.log.Error("nats server", "message", fmt.Sprintf(f, v...))
}
func (l *natsLogger) Fatalf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.fatal <- msg: // a nil channel never takes it
	default:
		l.log.Error("nats server fatal", "message", msg)
	}
}

// started makes later fatal errors go to the log only.
func (l *natsLogger) started() {
	l.mu.Lock()
	l.fatal = nil
	l.mu.Unlock()
}

// bus is a process's NATS connection with the JetStream objects regwarm
// uses. Setup runs in the background until it succeeds, so a process
// starts (and serve keeps serving) while NATS is unreachable.
type bus struct {
	url     string
	dialErr atomic.Pointer[error] // the last failed connection attempt
	nc      *nats.Conn
	js      jetstream.JetStream
	subj    events.Subjects
	setup   events.Setup
	log     *slog.Logger

	mu     sync.Mutex
	cons   jetstream.Consumer
	leases *events.Leases
	ready  chan struct{}
}

func newBus(url string, auth events.Auth, setup events.Setup, name string, log *slog.Logger, opts ...nats.Option) (*bus, error) {
	b := &bus{url: url, log: log, ready: make(chan struct{})}
	opts = append(opts, nats.ReconnectErrHandler(func(_ *nats.Conn, err error) { b.dialErr.Store(&err) }))
	nc, err := events.Connect(url, auth, name, log, true, opts...)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	b.nc, b.js = nc, js
	b.setup = setup
	b.subj = b.setup.Subjects
	return b, nil
}

// run applies the JetStream setup, retrying until it works or ctx ends.
// Nothing is logged once ctx ended (a shutdown, not a NATS problem).
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
		if ctx.Err() != nil {
			return
		}
		if de := b.dialErr.Load(); !b.nc.IsConnected() && de != nil {
			b.log.Warn("nats not reachable; retrying", "url", events.RedactURL(b.url), "error", *de)
		} else {
			b.log.Warn("nats setup failed; retrying", "url", events.RedactURL(b.url), "error", err)
		}
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

// Released implements cache.Leaser.
func (b *bus) Released(ctx context.Context, key string) error {
	l := b.leaseService()
	if l == nil || !b.nc.IsConnected() {
		return errNotReady
	}
	return l.Released(ctx, key)
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
