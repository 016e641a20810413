package deploy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/events"
)

// TestNATSConfigPermissions runs the NATS configs of deploy/ (compose,
// systemd) in an in-process server on a free port without cluster routes,
// and checks what the contract promises: user regwarm (password from
// REGWARM_NATS_PASSWORD) sets up and uses JetStream; an anonymous client
// may queue regwarm.sync (with JetStream's ack) and read events, and is
// refused the JetStream API, KV, misses and jobs.
func TestNATSConfigPermissions(t *testing.T) {
	t.Parallel()
	for _, file := range [][]string{{"deploy", "compose", "nats.conf"}, {"deploy", "systemd", "nats-server.conf"}} {
		t.Run(strings.Join(file, "/"), func(t *testing.T) {
			t.Parallel()
			checkNATSPermissions(t, string(readFile(t, file...)))
		})
	}
}

func checkNATSPermissions(t *testing.T, conf string) {
	t.Helper()
	opts := &server.Options{}
	// The variables the configs read from the environment.
	vars := "REGWARM_NATS_PASSWORD: \"pw\"\n"
	if strings.Contains(conf, "$NATS_SERVER_NAME") {
		vars += "NATS_SERVER_NAME: n1\n"
	}
	if err := opts.ProcessConfigString(vars + conf); err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.HTTPHost = ""
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil
	opts.StoreDir, opts.NoSigs = t.TempDir(), true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	defer s.Shutdown()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	own, err := nats.Connect(s.ClientURL(), nats.UserInfo("regwarm", "pw"))
	if err != nil {
		t.Fatalf("user regwarm: %v", err)
	}
	defer own.Close()
	js, _ := jetstream.New(own)
	setup := events.Setup{Subjects: events.Subjects{Prefix: "regwarm"}}
	if _, _, err := setup.Apply(ctx, js); err != nil {
		t.Fatalf("user regwarm cannot set up JetStream: %v", err)
	}
	if _, err := nats.Connect(s.ClientURL(), nats.UserInfo("regwarm", "wrong")); err == nil {
		t.Error("user regwarm with a wrong password was accepted")
	}

	refused := make(chan error, 8)
	anon, err := nats.Connect(s.ClientURL(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { refused <- err }))
	if err != nil {
		t.Fatalf("anonymous: %v", err)
	}
	defer anon.Close()
	ajs, _ := jetstream.New(anon)
	if ack, err := ajs.Publish(ctx, "regwarm.sync", []byte("hub/library/alpine:3.20")); err != nil || ack.Stream != setup.Subjects.Stream() {
		t.Errorf("anonymous publish to regwarm.sync: %+v, %v", ack, err)
	}
	if _, err := anon.SubscribeSync("regwarm.events.>"); err != nil || anon.Flush() != nil {
		t.Errorf("anonymous subscribe to events: %v", err)
	}
	select {
	case err := <-refused:
		t.Errorf("anonymous subscribe to events: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	for _, subj := range []string{"regwarm.miss.>", "$KV.>", "regwarm.jobs.run.>"} {
		_, _ = anon.SubscribeSync(subj)
		_ = anon.Flush()
		select {
		case <-refused:
		case <-time.After(5 * time.Second):
			t.Errorf("anonymous subscribe to %s was not refused", subj)
		}
	}
	for _, subj := range []string{"$JS.API.STREAM.LIST", "regwarm.jobs.run.gc", "$KV.regwarm_leases.x"} {
		_ = anon.Publish(subj, []byte("{}"))
		_ = anon.Flush()
		select {
		case <-refused:
		case <-time.After(5 * time.Second):
			t.Errorf("anonymous publish to %s was not refused", subj)
		}
	}
}
