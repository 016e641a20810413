package e2e

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestWorkerBadMessages publishes malformed sync requests with natscli and
// nats.go. Each must end, within seconds and without retries, as one
// regwarm.events.sync.failed event whose error names the problem; the
// worker keeps running and a good sync afterwards succeeds.
func TestWorkerBadMessages(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	im := pushNewImage(t, up, "e2e/good:v1", harness.ImageOptions{Seed: 721})
	cfg := workerConfig(ns.URL(), up.URL())
	w := startWorkers(t, cfg, "", 1)[0]
	events := watchEvents(t, ns.URL())
	js := harness.JetStream(t, ns.URL())
	nc := harness.NATSConn(t, ns.URL())

	big := "hub/e2e/" + strings.Repeat("a", 1<<20-len("hub/e2e/"))
	cases := []struct {
		name string
		body []byte
		via  string   // cli, cli-stdin or go
		want []string // in the error, case-insensitive
	}{
		{"garbage bytes", []byte("\xff\xfe\x00\x01garbage\x80\x81"), "cli-stdin", []string{"utf-8"}},
		{"JSON with wrong types", []byte(`{"image": 5}`), "cli", []string{"image", "number"}},
		{"1 MiB payload", []byte(big), "go", []string{"bytes", "limit"}},
		{"unconfigured host", []byte("nothere.example/x:y"), "cli", []string{"nothere.example"}},
		{"URL", []byte("http://127.0.0.1:1/x"), "cli", []string{"url"}},
	}
	failed := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			var seq uint64
			refused := ""
			switch tc.via {
			case "cli", "cli-stdin":
				seq = natsRequestSync(t, ns.URL(), tc.body, tc.via == "cli-stdin")
			case "go":
				// Like `nats request`: the reply is JetStream's ack or refusal.
				reply, err := nc.Request(syncSubject, tc.body, 5*time.Second)
				if err != nil {
					t.Fatalf("request %s: %v", syncSubject, err)
				}
				var ack struct {
					Seq   uint64          `json:"seq"`
					Error json.RawMessage `json:"error"`
				}
				if err := json.Unmarshal(reply.Data, &ack); err != nil || ack.Error != nil {
					refused = string(reply.Data)
				}
				seq = ack.Seq
			}
			// Without a seq (JetStream refused it), match the start of the body.
			prefix := string(tc.body[:min(len(tc.body), 16)])
			var got syncEvent
			err := harness.Poll(5*time.Second, func() error {
				for _, e := range events.All() {
					if (seq != 0 && e.Seq == seq) || (seq == 0 && strings.HasPrefix(e.Image, prefix)) {
						got = e
						return nil
					}
				}
				return errors.New("no event")
			})
			if err != nil {
				if refused != "" {
					t.Fatalf("no sync.failed event within 5s: the work stream refused the message, so no worker saw it "+
						"(JetStream answered %s); the contract wants a sync.failed event naming the problem", refused)
				}
				t.Fatalf("no sync event for seq %d within 5s", seq)
			}
			failed++
			t.Logf("%s after %.2fs: error %q", got.Subject, time.Since(start).Seconds(), got.Error)
			if got.done() {
				t.Fatalf("a malformed message was synced: %v", got)
			}
			for _, want := range tc.want {
				if !strings.Contains(strings.ToLower(got.Error), want) {
					t.Errorf("error %q does not mention %q", got.Error, want)
				}
			}
		})
	}

	// No retries: a terminated message leaves the work queue at once; one
	// still unacknowledged is redelivered after AckWait (1 minute) and fails
	// again, up to worker.max_deliveries times.
	if err := harness.Poll(10*time.Second, workDrained(js)); err != nil {
		t.Errorf("the malformed messages were not terminated, so each will be retried: %v "+
			"(nats-server 2.9 ignores the \"+TERM <reason>\" that Msg.TermWithReason sends; plain Term works)", err)
	}
	time.Sleep(time.Second)
	perSeq := map[uint64]int{}
	for _, e := range events.All() {
		perSeq[e.Seq]++
	}
	for seq, n := range perSeq {
		if n != 1 {
			t.Errorf("seq %d: %d result events, want 1", seq, n)
		}
	}
	if got := harness.ScrapeMetrics(t, w.MetricsAddr).Value("regwarm_sync_jobs_total", "result", "failed"); got != float64(failed) {
		t.Errorf("regwarm_sync_jobs_total{result=failed} = %v, want %d", got, failed)
	}

	if exited, err := w.Exited(); exited {
		t.Fatalf("the worker exited: %v", err)
	}
	seq := natsRequestSync(t, ns.URL(), []byte("hub/e2e/good:v1"), false)
	good := events.Wait(t, 30*time.Second, "a good sync after the bad ones", func(e syncEvent) bool { return e.Seq == seq })
	if !good.done() || good.Digest != im.IndexDigest {
		t.Errorf("good sync: %v, want done with digest %s", good, im.IndexDigest)
	}
	if m := missingBlobs(w.DataDir, blobsOf(im, "linux/amd64", "linux/arm64")); len(m) > 0 {
		t.Errorf("good sync: blobs missing from the store: %v", m)
	}
}

// TestSyncCLI runs `regwarm sync` against serve plus a worker: exit 0 when
// every image synced, 1 when one failed (an unknown tag) or is not an
// image name, 2 for usage and connection errors; every image gets a line that names it.
func TestSyncCLI(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	ns := harness.StartNATS(t)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})
	im1 := pushNewImage(t, up, "e2e/cli:v1", harness.ImageOptions{Seed: 731})
	im2 := pushNewImage(t, up, "e2e/cli2:v1", harness.ImageOptions{Seed: 732})
	cfg := workerConfig(ns.URL(), up.URL())
	rw := harness.StartRegwarm(t, "serve", cfg)
	startWorkers(t, cfg, rw.DataDir, 1)

	regwarmSync := func(args ...string) (string, int) {
		t.Helper()
		out, err := harness.Try(t, nil, harness.RegwarmBinary(t), append([]string{"sync"}, args...)...)
		var ee *exec.ExitError
		switch {
		case err == nil:
			return out, 0
		case errors.As(err, &ee):
			return out, ee.ExitCode()
		}
		t.Fatalf("regwarm sync: %v\n%s", err, out)
		return "", 0
	}
	// hasLine reports whether a line starts with verb and then names image.
	hasLine := func(out, verb, image string) bool {
		for _, l := range strings.Split(out, "\n") {
			rest, ok := strings.CutPrefix(l, verb)
			rest = strings.TrimLeft(rest, " ")
			if ok && (strings.HasPrefix(rest, image+" ") || strings.HasPrefix(rest, image+":")) {
				return true
			}
		}
		return false
	}
	type line struct{ verb, image string }
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		lines []line
	}{
		{"all synced", []string{"--config", rw.ConfigPath, "--timeout", "60s", "hub/e2e/cli:v1", "lab.local/e2e/cli2:v1"},
			0, []line{{"synced", "hub/e2e/cli:v1"}, {"synced", "lab.local/e2e/cli2:v1"}}},
		{"unknown tag", []string{"--config", rw.ConfigPath, "--nats-url", ns.URL(), "--timeout", "60s", "hub/e2e/cli:v1", "hub/e2e/cli:nope"},
			1, []line{{"synced", "hub/e2e/cli:v1"}, {"failed", "hub/e2e/cli:nope"}}},
		{"no image", []string{"--config", rw.ConfigPath}, 2, nil},
		{"unknown flag", []string{"--config", rw.ConfigPath, "--bogus", "hub/e2e/cli:v1"}, 2, nil},
		{"URL for an image", []string{"--config", rw.ConfigPath, "http://127.0.0.1:1/x"}, 1, []line{{"error", "http://127.0.0.1:1/x"}}},
		{"no NATS", []string{"--config", rw.ConfigPath, "--nats-url", "nats://" + harness.FreeAddr(t), "hub/e2e/cli:v1"}, 2, nil},
	} {
		out, code := regwarmSync(tc.args...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s", tc.name, code, tc.code, out)
		}
		for _, l := range tc.lines {
			if !hasLine(out, l.verb, l.image) {
				t.Errorf("%s: no line %q naming %s in\n%s", tc.name, l.verb, l.image, out)
			}
		}
		if tc.name == "URL for an image" && !strings.Contains(out, "http://127.0.0.1:1/x") {
			t.Errorf("%s: the error does not name the image:\n%s", tc.name, out)
		}
	}
	for _, im := range []*harness.Image{im1, im2} {
		if m := missingBlobs(rw.DataDir, blobsOf(im, "linux/amd64", "linux/arm64")); len(m) > 0 {
			t.Errorf("after regwarm sync: blobs missing from the store: %v", m)
		}
	}
}
