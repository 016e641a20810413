package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestEmbeddedNATSAnonymousLimits drives the embedded NATS server of
// `regwarm run` with the real nats CLI: an anonymous client may publish
// and request regwarm.sync and read events (no auth configured), and is
// refused the JetStream API, KV, miss events and jobs; a
// Regwarm-Reply-To header naming a KV key is not published to; user
// regwarm with the generated password may do everything, and `regwarm
// sync` finds that password by itself.
func TestEmbeddedNATSAnonymousLimits(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	rw := harness.StartRegwarm(t, "run", coreConfig)
	url := rw.NATSURL()
	fi, err := os.Stat(filepath.Join(rw.DataDir, "nats-password"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("nats-password: %v; want mode 0600", err)
	}
	evs := watchEvents(t, url) // anonymous: events are readable without auth

	// What regwarm's own user sees on KV subjects: no sync result may land there.
	leaked := make(chan string, 8)
	own := rw.NATSConn()
	if _, err := own.Subscribe("$KV.>", func(m *nats.Msg) {
		if strings.Contains(string(m.Data), `"image"`) {
			leaked <- m.Subject
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := own.Flush(); err != nil {
		t.Fatal(err)
	}
	failedFor := func(image string) func(syncEvent) bool {
		return func(e syncEvent) bool { return e.Image == image && !e.done() }
	}

	// Allowed: publish and request regwarm.sync.
	if out, err := natsCLI(t, url, nil, "publish", syncSubject, "local/e2e/anon:v1"); err != nil {
		t.Fatalf("anonymous nats publish: %v\n%s", err, out)
	}
	evs.Wait(t, 30*time.Second, "the published sync's .failed event", failedFor("local/e2e/anon:v1"))
	seq := natsRequestSync(t, url, []byte("local/e2e/anon:v2"), false)
	evs.Wait(t, 30*time.Second, "the requested sync's event", func(e syncEvent) bool { return e.Seq == seq })

	// Refused: the JetStream API, KV, miss events, jobs.
	for _, args := range [][]string{
		{"kv", "ls"},
		{"stream", "ls"},
		{"sub", "regwarm.miss.>", "--count", "1"},
		{"request", "regwarm.jobs.run.verify", "{}"},
	} {
		out, _ := natsCLI(t, url, nil, append([]string{"--timeout", "2s"}, args...)...)
		if !strings.Contains(out, "Permissions Violation") {
			t.Errorf("anonymous nats %s was not refused:\n%s", strings.Join(args, " "), out)
		}
	}

	// A reply subject outside _INBOX.> is ignored; the event still comes.
	if out, err := natsCLI(t, url, nil, "publish", "-H", "Regwarm-Reply-To:$KV.regwarm_leases.job.gc",
		syncSubject, "local/e2e/anon:v3"); err != nil {
		t.Fatalf("nats publish with a header: %v\n%s", err, out)
	}
	evs.Wait(t, 30*time.Second, "the .failed event of the sync with a KV reply subject", failedFor("local/e2e/anon:v3"))
	harness.Eventually(t, 10*time.Second, "a log line about the ignored reply subject", func() error {
		if !strings.Contains(rw.Log(), "reply subject ignored") {
			return errors.New(`no "reply subject ignored" in the log`)
		}
		return nil
	})
	_ = own.Flush()
	select {
	case s := <-leaked:
		t.Errorf("the worker published a sync result to %s", s)
	case <-time.After(500 * time.Millisecond):
	}

	// User regwarm with the generated password: jobs and JetStream.
	pw := rw.NATSPassword()
	out, err := natsCLI(t, url, nil, "--user", "regwarm", "--password", pw, "--timeout", "30s",
		"request", "regwarm.jobs.run.dangling_scan", "{}")
	if err != nil || !strings.Contains(out, `"job":"dangling_scan"`) {
		t.Errorf("nats request regwarm.jobs.run.dangling_scan as regwarm: %v\n%s", err, out)
	}
	out, err = natsCLI(t, url, nil, "--user", "regwarm", "--password", pw, "stream", "ls")
	if err != nil || !strings.Contains(out, workStream) {
		t.Errorf("nats stream ls as regwarm: %v\n%s", err, out)
	}
	if _, err := natsCLI(t, url, nil, "--user", "regwarm", "--password", "wrong", "--timeout", "2s", "stream", "ls"); err == nil {
		t.Error("a wrong password was accepted")
	}
	r := runRegwarmCLI(t, "sync", "--config", rw.ConfigPath, "--timeout", "60s", "local/e2e/anon:v4")
	r.wantCode(t, 1) // connected and queued; the tag does not exist
	if !strings.Contains(r.stdout, "failed  local/e2e/anon:v4") {
		t.Errorf("regwarm sync through the embedded server:\n%s%s", r.stdout, r.stderr)
	}
}
