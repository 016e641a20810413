package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

const webhookSecret = "e2e-webhook-secret"

// webhookPlatforms are the platforms harness.BuildImage builds by default.
var webhookPlatforms = []string{"linux/amd64", "linux/arm64"}

// TestWebhookDistributionWarmsBeforeAnyPull: docker-registry notifies
// regwarm run of every push (its `notifications: endpoints:`). A new
// multi-platform image pushed upstream is local, every blob of every
// platform, without any client pulling (proved with the upstream stopped);
// a new image pushed under the same tag is served at once although
// tag_ttl is 1h.
func TestWebhookDistributionWarmsBeforeAnyPull(t *testing.T) {
	requireRegwarm(t)
	t.Setenv("REGWARM_E2E_WEBHOOK_SECRET", webhookSecret) // regwarm inherits it
	upAddr := harness.FreeAddr(t)
	rw := harness.StartRegwarm(t, "run", harness.ConfigHeader+hubRegistries("http://"+upAddr, time.Hour)+jobsOff+`webhooks:
  - {name: upstream, format: distribution, connector: up, secret_env: REGWARM_E2E_WEBHOOK_SECRET, actions: [push, delete]}
`)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{Addr: upAddr,
		NotifyURL: rw.URL() + "/webhooks/upstream", NotifyHeaders: map[string]string{"Authorization": "Bearer " + webhookSecret}})
	const repo = "e2e/hooked"

	// 1. A new image: warm before anyone pulls.
	v1 := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 151})
	start := time.Now()
	pushImage(t, v1, up.Addr+"/"+repo+":v1")
	pushed := time.Now()
	warm := waitBlobs(t, rw.DataDir, 30*time.Second, "every blob of every platform of v1", blobsOf(v1, webhookPlatforms...))
	t.Logf("v1: skopeo push took %s; push finished -> fully warm in %s (both platforms, %d blobs)",
		pushed.Sub(start).Round(time.Millisecond), warm.Round(time.Millisecond), len(blobsOf(v1, webhookPlatforms...)))
	if code, d := manifestDigest(t, rw, "/v2/hub/"+repo+"/manifests/v1"); code != http.StatusOK || d != v1.IndexDigest {
		t.Fatalf("v1 tag: %d %s, want %s", code, d, v1.IndexDigest)
	}
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && strings.Contains(r.Path, "/blobs/") && !strings.HasPrefix(r.Agent, "regwarm") {
			t.Errorf("a client pulled from the upstream: %s %s (%s)", r.Method, r.Path, r.Agent)
		}
	}
	_ = up.Stop() // docker-registry dies by SIGTERM; it is down either way
	out := filepath.Join(t.TempDir(), "v1")
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+out+":v1")
	harness.AssertSameLayout(t, v1, out)

	// 2. A new image under the same tag: served at once despite tag_ttl 1h.
	up.Start()
	v2 := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 152})
	pushImage(t, v2, up.Addr+"/"+repo+":v1")
	pushed = time.Now()
	harness.Eventually(t, 15*time.Second, "the tag moved to v2", func() error {
		if _, d := manifestDigest(t, rw, "/v2/hub/"+repo+"/manifests/v1"); d != v2.IndexDigest {
			return fmt.Errorf("tag -> %s, want %s", d, v2.IndexDigest)
		}
		return nil
	})
	moved := time.Since(pushed)
	waitBlobs(t, rw.DataDir, 30*time.Second, "every blob of v2", blobsOf(v2, webhookPlatforms...))
	warm = time.Since(pushed)
	t.Logf("v2 under the same tag (tag_ttl 1h): push finished -> tag moved in %s, fully warm in %s",
		moved.Round(time.Millisecond), warm.Round(time.Millisecond))
	_ = up.Stop() // docker-registry dies by SIGTERM; it is down either way
	out = filepath.Join(t.TempDir(), "v2")
	harness.Skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+rw.Addr+"/hub/"+repo+":v1", "oci:"+out+":v1")
	harness.AssertSameLayout(t, v2, out)

	m := harness.ScrapeMetrics(t, rw.MetricsAddr)
	if m.Value("regwarm_webhook_requests_total", "webhook", "upstream", "result", "accepted") == 0 ||
		m.Value("regwarm_webhook_images_total", "webhook", "upstream", "result", "queued") == 0 ||
		m.Value("regwarm_webhook_images_total", "webhook", "upstream", "result", "ignored") == 0 {
		t.Errorf("webhook metrics: accepted %v queued %v ignored %v",
			m.Value("regwarm_webhook_requests_total", "webhook", "upstream", "result", "accepted"),
			m.Value("regwarm_webhook_images_total", "webhook", "upstream", "result", "queued"),
			m.Value("regwarm_webhook_images_total", "webhook", "upstream", "result", "ignored"))
	}
	if n := m.Value("regwarm_webhook_requests_total", "webhook", "upstream", "result", "unauthorized"); n != 0 {
		t.Errorf("%v unauthorized requests from docker-registry", n)
	}

	// 3. Deleted upstream: the tag stops being served at once (tag_ttl 1h);
	// the content stays until gc.
	up.Start()
	resp, err := send(httpClient, http.MethodDelete, up.URL()+"/v2/"+repo+"/manifests/"+v2.IndexDigest, "")
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete upstream: %v %v", resp, err)
	}
	harness.Eventually(t, 15*time.Second, "the deleted tag is not served", func() error {
		if code, d := manifestDigest(t, rw, "/v2/hub/"+repo+"/manifests/v1"); code != http.StatusNotFound {
			return fmt.Errorf("status %d digest %s, want 404", code, d)
		}
		return nil
	})
	if code, _ := manifestDigest(t, rw, "/v2/hub/"+repo+"/manifests/"+v2.IndexDigest); code != http.StatusOK {
		t.Errorf("the index by digest: %d, want 200 (content stays)", code)
	}
	if m := missingBlobs(rw.DataDir, blobsOf(v2, webhookPlatforms...)); len(m) > 0 {
		t.Errorf("blobs removed: %v", m)
	}
}

// TestWebhookConfigCheck: `regwarm config check` refuses a webhook
// without a secret (and with an unset variable), naming the field; with
// the variable set it prints the webhook, not the secret.
func TestWebhookConfigCheck(t *testing.T) {
	requireRegwarm(t)
	dir := t.TempDir()
	base := `version: 1
data_dir: ` + filepath.Join(dir, "data") + `
registries:
  - {name: hub, default: true, connectors: [up]}
connectors:
  - {name: up, url: "http://127.0.0.1:1"}
webhooks:
  - {name: upstream, format: distribution, connector: up`
	for _, tc := range []struct{ name, hook, want string }{
		{"no secret", base + "}\n", "webhooks[0].secret_env: required"},
		{"unset variable", base + ", secret_env: REGWARM_E2E_UNSET_SECRET}\n", `webhooks[0].secret_env: "REGWARM_E2E_UNSET_SECRET": environment variable is not set`},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
		writeFile(t, path, tc.hook)
		res := runRegwarmCLI(t, "config", "check", "--config", path)
		res.wantCode(t, 2)
		if !strings.Contains(res.stderr, tc.want) {
			t.Errorf("%s: stderr does not say %q:\n%s", tc.name, tc.want, res.stderr)
		}
	}
	t.Setenv("REGWARM_E2E_CHECK_SECRET", "do-not-print-me")
	path := filepath.Join(dir, "good.yaml")
	writeFile(t, path, base+", secret_env: REGWARM_E2E_CHECK_SECRET}\n")
	res := runRegwarmCLI(t, "config", "check", "--config", path)
	res.wantCode(t, 0)
	if !strings.Contains(res.stdout, "REGWARM_E2E_CHECK_SECRET") || strings.Contains(res.stdout+res.stderr, "do-not-print-me") {
		t.Errorf("config check output:\n%s\n%s", res.stdout, res.stderr)
	}
}

// TestWebhookServeWithoutNATS: `regwarm serve` without nats.url answers a
// notification 503 with a clear error, and a wrong secret 401; the
// secrets never reach the log.
func TestWebhookServeWithoutNATS(t *testing.T) {
	requireRegwarm(t)
	t.Setenv("REGWARM_E2E_WEBHOOK_SECRET", webhookSecret)
	rw := harness.StartRegwarm(t, "serve", `version: 1
data_dir: "{{.DataDir}}"
serve: {listen: "{{.Addr}}"}
metrics: {listen: "{{.MetricsAddr}}"}
`+hubRegistries("http://127.0.0.1:1", time.Minute)+`webhooks:
  - {name: upstream, format: distribution, connector: up, secret_env: REGWARM_E2E_WEBHOOK_SECRET}
`)
	post := func(auth string) (int, string) {
		req, err := http.NewRequest(http.MethodPost, rw.URL()+"/webhooks/upstream", strings.NewReader(`{"events": []}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", auth)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post("Bearer " + webhookSecret); code != http.StatusServiceUnavailable || !strings.Contains(body, "need NATS") {
		t.Errorf("without NATS: %d %s", code, body)
	}
	if code, body := post("Bearer wrong-secret-value"); code != http.StatusUnauthorized || !strings.Contains(body, "UNAUTHORIZED") {
		t.Errorf("wrong secret: %d %s", code, body)
	}
	if log := rw.Log(); strings.Contains(log, webhookSecret) || strings.Contains(log, "wrong-secret-value") {
		t.Errorf("a secret reached the log:\n%s", harness.LastLines(log, 20))
	}
}
