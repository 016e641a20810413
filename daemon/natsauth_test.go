package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/config"
)

// embeddedEnv starts the embedded server of a config with data_dir in a
// temporary directory, and applies regwarm's JetStream setup as user
// regwarm.
func embeddedEnv(t *testing.T, extra string) (*config.Config, string, *nats.Conn) {
	t.Helper()
	dir := t.TempDir()
	cfg, err := config.Parse([]byte("version: 1\ndata_dir: " + dir + "\nnats: {embedded: {listen: 127.0.0.1:0}}\n" + extra))
	if err != nil {
		t.Fatal(err)
	}
	ns, url, auth, err := StartEmbeddedNATS(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(url, auth)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := natsSetup(cfg).Apply(ctx, js); err != nil {
		t.Fatal(err)
	}
	return cfg, url, nc
}

// TestEmbeddedNATSPermissions: an anonymous client of the embedded server
// can queue sync requests (and gets JetStream's ack) and read events, and
// nothing else; user regwarm with the generated password can do all.
func TestEmbeddedNATSPermissions(t *testing.T) {
	t.Parallel()
	cfg, url, own := embeddedEnv(t, "")
	fi, err := os.Stat(filepath.Join(cfg.DataDir, NATSPasswordFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("nats-password: %v, mode %v; want 0600", err, fi.Mode())
	}

	violations := make(chan error, 16)
	anon, err := nats.Connect(url, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	ajs, err := jetstream.New(anon)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := ajs.Publish(ctx, "regwarm.sync", []byte("local/x:v1"))
	if err != nil || ack.Stream != "REGWARM_WORK" {
		t.Fatalf("anonymous publish to regwarm.sync: %+v, %v", ack, err)
	}

	// Events: allowed without auth.
	evs, err := anon.SubscribeSync("regwarm.events.>")
	if err != nil {
		t.Fatal(err)
	}
	// regwarm's own traffic, inboxes included, never reaches anonymous.
	inbox, err := anon.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := anon.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := own.Publish("regwarm.events.sync.done", []byte(`{"image":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := evs.NextMsg(5 * time.Second); err != nil {
		t.Errorf("anonymous subscriber got no event: %v", err)
	}
	if err := own.Publish("_INBOX.own.1", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	_ = own.Flush()
	if m, err := inbox.NextMsg(300 * time.Millisecond); err == nil {
		t.Errorf("anonymous subscriber saw regwarm's inbox traffic: %s %q", m.Subject, m.Data)
	}

	// Refused: JetStream API, KV, misses, jobs (a denied request just
	// gets no answer).
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := ajs.Stream(ctx, "REGWARM_WORK"); err == nil {
		t.Error("anonymous client reached the JetStream API")
	}
	if _, err := ajs.KeyValue(ctx, "regwarm_leases"); err == nil {
		t.Error("anonymous client reached the lease bucket")
	}
	if _, err := anon.Request("regwarm.jobs.run.verify", []byte("{}"), time.Second); err == nil {
		t.Error("anonymous client ran a job")
	}
	for _, subj := range []string{"regwarm.miss.>", "$KV.>", "regwarm.jobs.run.>", ">"} {
		if _, err := anon.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		_ = anon.Flush()
		select {
		case err := <-violations:
			if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(err.Error(), "Permissions Violation") {
				t.Errorf("subscribe %s: %v", subj, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("anonymous subscription to %s was not refused", subj)
		}
	}
	if err := anon.Publish("$KV.regwarm_leases.job.gc", []byte("x")); err == nil {
		_ = anon.Flush()
		select {
		case <-violations:
		case <-time.After(5 * time.Second):
			t.Error("anonymous publish to a KV key was not refused")
		}
	}

	// The password is created once and reused.
	pw1, _ := os.ReadFile(filepath.Join(cfg.DataDir, NATSPasswordFile))
	pw2, err := embeddedPassword(cfg)
	if err != nil || pw2 != strings.TrimSpace(string(pw1)) {
		t.Errorf("embeddedPassword again: %q, %v; file has %q", pw2, err, pw1)
	}
	if _, err := nats.Connect(url, nats.UserInfo(EmbeddedUser, "wrong")); err == nil {
		t.Error("a wrong password was accepted")
	}
}

// TestEmbeddedNATSEventsNeedNoAuth: with auth configured, anonymous
// clients may still queue syncs but not read events.
func TestEmbeddedNATSEventsNeedNoAuth(t *testing.T) {
	t.Parallel()
	_, url, _ := embeddedEnv(t, "auth: {htpasswd_file: /nonexistent}\n")
	violations := make(chan error, 4)
	anon, err := nats.Connect(url, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	ajs, _ := jetstream.New(anon)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ajs.Publish(ctx, "regwarm.sync", []byte("local/x:v1")); err != nil {
		t.Fatalf("anonymous publish to regwarm.sync: %v", err)
	}
	if _, err := anon.SubscribeSync("regwarm.events.>"); err != nil {
		t.Fatal(err)
	}
	_ = anon.Flush()
	select {
	case <-violations:
	case <-time.After(5 * time.Second):
		t.Error("anonymous subscription to events was not refused with auth configured")
	}
}

// TestEmbeddedNATSKeepsOlderStore: the work stream of a regwarm from
// before the embedded server had accounts (JetStream in the global
// account) is still there, with its queued jobs, after the upgrade.
func TestEmbeddedNATSKeepsOlderStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg, err := config.Parse([]byte("version: 1\ndata_dir: " + dir + "\nnats: {embedded: {listen: 127.0.0.1:0}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := runNATS(t, cfg.NATSStoreDir(), -1)
	nc, err := nats.Connect(old.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, _, err := natsSetup(cfg).Apply(ctx, js); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "regwarm.sync", []byte("local/queued:v1")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	old.Shutdown()
	old.WaitForShutdown()

	ns, url, auth, err := StartEmbeddedNATS(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	own, err := nats.Connect(url, auth)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	js, _ = jetstream.New(own)
	s, err := js.Stream(ctx, "REGWARM_WORK")
	if err != nil {
		t.Fatalf("the work stream after the upgrade: %v", err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("the work stream after the upgrade: %+v, %v; want the queued job", info, err)
	}
}
