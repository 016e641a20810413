package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/webhook"
)

// The digest in the Harbor and CloudEvents samples, replaced by the test
// image's.
const sampleDigest = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"

const webhookSecret = "daemon-test-secret"

const webhookExtra = `webhooks:
  - {name: harbor, format: harbor, connector: up, secret_env: REGWARM_DAEMON_WEBHOOK_SECRET, actions: [push, delete]}
  - {name: hub, format: dockerhub, connector: up, secret_env: REGWARM_DAEMON_WEBHOOK_SECRET}
  - {name: ce, format: cloudevents, connector: up, secret_env: REGWARM_DAEMON_WEBHOOK_SECRET, actions: [push, delete]}
  - {name: dist, format: distribution, connector: up, secret_env: REGWARM_DAEMON_WEBHOOK_SECRET}
`

// newWebhookEnv is a worker env with the webhooks; ttl > 0 sets the hub
// registry's tag_ttl.
func newWebhookEnv(t *testing.T, ttl time.Duration) (*workerEnv, http.Handler) {
	t.Setenv("REGWARM_DAEMON_WEBHOOK_SECRET", webhookSecret)
	e := newWorkerEnv(t, webhookExtra)
	if ttl > 0 {
		e.cfg.Registries[0].TagTTL = config.Duration(ttl)
		e.cache = e.newCache(e.bus)
	}
	h := webhook.New(webhookHooks(e.cfg), webhookQueue{js: e.bus.js, subject: e.bus.subj.Sync()}, webhook.WithTags(e.cache))
	return e, h
}

// postSample posts a recorded sample (with the digest replaced), wants
// 202 and returns the answer's body.
func postSample(t *testing.T, h http.Handler, hook, file, dgst string) string {
	t.Helper()
	b, err := os.ReadFile("../internal/webhook/testdata/" + file)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.ReplaceAll(b, []byte(sampleDigest), []byte(dgst))
	r := httptest.NewRequest(http.MethodPost, "/webhooks/"+hook, bytes.NewReader(b))
	r.Header.Set("Authorization", "Bearer "+webhookSecret)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusAccepted {
		t.Fatalf("%s: status %d: %s", file, w.Code, w.Body)
	}
	return w.Body.String()
}

// TestWebhookSamplesSync: the recorded Harbor, CloudEvents and Docker Hub
// samples each lead to a sync job that warms every blob of the image.
func TestWebhookSamplesSync(t *testing.T) {
	e, h := newWebhookEnv(t, 0)
	e.startWorker()
	r := e.watch()
	platforms := []string{"linux/amd64", "linux/arm64"}
	alpine := e.up.AddIndex("library/alpine", "3.17", platforms, 50<<10, 4<<10)
	for _, tc := range []struct{ hook, file, image string }{
		{"harbor", "harbor_push.json", "hub/library/alpine:3.17@" + alpine.Digest.String()},
		{"ce", "cloudevents_push.json", "hub/library/alpine:3.17@" + alpine.Digest.String()},
	} {
		answer := postSample(t, h, tc.hook, tc.file, alpine.Digest.String())
		res := r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Image == tc.image })
		if res.Error != "" || res.Digest != alpine.Digest.String() {
			t.Fatalf("%s: result %+v", tc.file, res)
		}
		if tc.hook == "ce" && !strings.Contains(answer, `"queued":0,"duplicate":1`) {
			// The same push named again within the duplicate window is one job.
			t.Errorf("the CloudEvents copy of the Harbor push was queued again: %s", answer)
		}
	}
	if !e.hasAll(store.Repo{Registry: "hub", Name: "library/alpine"}, alpine.Blobs()) {
		t.Error("alpine not fully warm")
	}
	hub := e.up.AddIndex("svendowideit/testhook", "latest", platforms, 50<<10, 4<<10)
	postSample(t, h, "hub", "dockerhub.json", "")
	res := r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Image == "hub/svendowideit/testhook:latest" })
	if res.Error != "" || res.Digest != hub.Digest.String() {
		t.Fatalf("docker hub: result %+v", res)
	}
	if !e.hasAll(store.Repo{Registry: "hub", Name: "svendowideit/testhook"}, hub.Blobs()) {
		t.Error("testhook not fully warm")
	}
}

// TestWebhookMultiPlatformPush: distribution announces each platform
// manifest (by digest) and then the index (by tag); one job warms the
// platforms sync.platforms allows, and no other.
func TestWebhookMultiPlatformPush(t *testing.T) {
	e, h := newWebhookEnv(t, 0)
	e.startWorker()
	r := e.watch()
	ix := e.up.AddIndex("team/multi", "v1", []string{"linux/amd64", "linux/arm64", "linux/s390x"}, 20<<10)
	var evs []string
	event := func(mediaType, d, tag string) string {
		return fmt.Sprintf(`{"action":"push","target":{"mediaType":%q,"digest":%q,"repository":"team/multi","tag":%q}}`, mediaType, d, tag)
	}
	for _, c := range ix.Children {
		evs = append(evs, event("application/vnd.oci.image.manifest.v1+json", c.Digest.String(), ""))
	}
	evs = append(evs, event("application/vnd.oci.image.index.v1+json", ix.Digest.String(), "v1"))
	req := httptest.NewRequest(http.MethodPost, "/webhooks/dist", strings.NewReader(`{"events":[`+strings.Join(evs, ",")+`]}`))
	req.Header.Set("Authorization", "Bearer "+webhookSecret)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusAccepted || !strings.Contains(w.Body.String(), `"queued":1,`) {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	res := r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return s.Image == "hub/team/multi:v1@"+ix.Digest.String() })
	if res.Error != "" || res.Manifests != 3 {
		t.Fatalf("result %+v, want the index and 2 platforms", res)
	}
	repo := store.Repo{Registry: "hub", Name: "team/multi"}
	for p, img := range ix.Children {
		if got, want := e.hasAll(repo, append(img.Layers, img.Config)), p != "linux/s390x"; got != want {
			t.Errorf("platform %s present=%v, want %v (sync.platforms)", p, got, want)
		}
	}
}

// TestWebhookTagMovesAtOnce: with tag_ttl 1h, a client's cached tag (still
// pending its write-behind) gives way to the notified push at once.
func TestWebhookTagMovesAtOnce(t *testing.T) {
	e, h := newWebhookEnv(t, time.Hour)
	e.startWorker()
	r := e.watch()
	repo := store.Repo{Registry: "hub", Name: "library/alpine"}
	platforms := []string{"linux/amd64"}
	old := e.up.AddIndex("library/alpine", "3.17", platforms, 4<<10)
	ctx := context.Background()
	if ti, err := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); err != nil || ti.Digest != old.Digest {
		t.Fatalf("first pull: %v %v", ti, err)
	}
	moved := e.up.AddIndex("library/alpine", "3.17", platforms, 5<<10)
	if ti, _ := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); ti.Digest != old.Digest {
		t.Fatalf("tag_ttl 1h: the cached tag should still be served before the notification")
	}
	postSample(t, h, "harbor", "harbor_push.json", moved.Digest.String())
	r.wait(t, 10*time.Second, func(s events.SyncResult) bool {
		return strings.HasSuffix(s.Image, moved.Digest.String()) && s.Error == ""
	})
	if ti, err := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); err != nil || ti.Digest != moved.Digest {
		t.Fatalf("after the notified push: tag -> %s (%v), want %s", ti.Digest, err, moved.Digest)
	}
	if !e.hasAll(repo, moved.Blobs()) {
		t.Error("moved image not warm")
	}
}

// TestWebhookBeforeTagWritten: distribution notifies a push before it
// writes the tag; the job waits for the upstream to show the new digest
// under the tag instead of keeping the old one for tag_ttl.
func TestWebhookBeforeTagWritten(t *testing.T) {
	e, h := newWebhookEnv(t, time.Hour)
	e.startWorker()
	r := e.watch()
	repo := store.Repo{Registry: "hub", Name: "library/alpine"}
	old := e.up.AddIndex("library/alpine", "3.17", []string{"linux/amd64"}, 4<<10)
	ctx := context.Background()
	if _, err := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); err != nil {
		t.Fatal(err)
	}
	moved := e.up.AddIndex("library/alpine", "other", []string{"linux/amd64"}, 5<<10) // pushed, not yet under 3.17
	time.AfterFunc(400*time.Millisecond, func() { e.up.Tag("library/alpine", "3.17", moved.Digest) })
	postSample(t, h, "harbor", "harbor_push.json", moved.Digest.String())
	res := r.wait(t, 10*time.Second, func(s events.SyncResult) bool { return strings.HasSuffix(s.Image, moved.Digest.String()) })
	if res.Error != "" {
		t.Fatalf("result %+v", res)
	}
	if ti, err := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); err != nil || ti.Digest != moved.Digest {
		t.Fatalf("tag -> %s (%v), want %s (was %s)", ti.Digest, err, moved.Digest, old.Digest)
	}
}

// TestWebhookDeleteRevalidates: a delete notification makes the next pull
// revalidate the tag (gone upstream: not found), whatever tag_ttl says;
// the content stays.
func TestWebhookDeleteRevalidates(t *testing.T) {
	e, h := newWebhookEnv(t, time.Hour)
	repo := store.Repo{Registry: "hub", Name: "library/alpine"}
	img := e.up.AddIndex("library/alpine", "3.17", []string{"linux/amd64"}, 4<<10)
	ctx := context.Background()
	if _, err := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); err != nil {
		t.Fatal(err)
	}
	e.up.Delete(img.Digest)
	if ti, err := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); err != nil || ti.Digest != img.Digest {
		t.Fatalf("before the notification the fresh tag is served: %v %v", ti, err)
	}
	postSample(t, h, "ce", "cloudevents_deleted.json", img.Digest.String())
	if _, err := e.cache.Serving().Request("").Tag(ctx, repo, "3.17"); !errors.Is(err, store.ErrTagUnknown) {
		t.Fatalf("after the delete notification: err %v, want tag unknown", err)
	}
	if _, err := e.store.Manifest(ctx, repo, img.Digest); err != nil {
		t.Errorf("content removed: %v", err)
	}
}

// BenchmarkWebhookHandlerNATS measures a Harbor notification answered
// after its job is in a real (in-process) JetStream stream.
func BenchmarkWebhookHandlerNATS(b *testing.B) {
	b.Setenv("REGWARM_DAEMON_WEBHOOK_SECRET", webhookSecret)
	e := newWorkerEnvExtra(b, webhookExtra)
	h := webhook.New(webhookHooks(e.cfg), webhookQueue{js: e.bus.js, subject: e.bus.subj.Sync()})
	body, err := os.ReadFile("../internal/webhook/testdata/harbor_push.json")
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		// A new tag each time: every request queues a job.
		i++
		data := bytes.Replace(body, []byte(`"tag": "3.17"`), []byte(`"tag": "v`+strings.Repeat("1", 1+i%3)+time.Now().Format("150405.000000000")+`"`), 1)
		r := httptest.NewRequest(http.MethodPost, "/webhooks/harbor", bytes.NewReader(data))
		r.Header.Set("Authorization", webhookSecret)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusAccepted {
			b.Fatal(w.Code, w.Body)
		}
	}
}
