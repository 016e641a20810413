package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

const secret = "s3cret-webhook-token"

// fakeQueue records jobs and deduplicates by id, as JetStream does.
type fakeQueue struct {
	mu   sync.Mutex
	jobs []string
	ids  map[string]bool
	err  error
}

func (q *fakeQueue) Sync(_ context.Context, image, id string) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return false, q.err
	}
	if q.ids == nil {
		q.ids = map[string]bool{}
	}
	if q.ids[id] {
		return true, nil
	}
	q.ids[id] = true
	q.jobs = append(q.jobs, image)
	return false, nil
}

func (q *fakeQueue) got() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]string(nil), q.jobs...)
}

type fakeTags struct {
	mu  sync.Mutex
	got []string
}

func (f *fakeTags) ExpireTags(_ context.Context, repo store.Repo, tag string, d digest.Digest) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, repo.String()+":"+tag+"@"+d.String())
	return 1, nil
}

type env struct {
	h    *Handler
	q    *fakeQueue
	tags *fakeTags
	m    *metrics.Set
}

func newEnv(t testing.TB, withQueue bool) *env {
	t.Helper()
	// The registries hub and mirror use connector up, which excludes
	// private/**; other and local do not.
	up := []Target{{Registry: "hub", Filter: connector.Filter{Exclude: []string{"private/**"}}},
		{Registry: "mirror", Filter: connector.Filter{Exclude: []string{"private/**"}}}}
	both := []string{ActionPush, ActionDelete}
	hooks := []Hook{
		{Name: "dist", Format: config.WebhookDistribution, Secret: secret, Actions: both, Targets: up},
		{Name: "harbor", Format: config.WebhookHarbor, Secret: secret, Actions: []string{ActionPush}, Targets: up},
		{Name: "hub", Format: config.WebhookDockerHub, Secret: secret, Actions: []string{ActionPush}, Targets: up},
		{Name: "ce", Format: config.WebhookCloudEvents, Secret: secret, Actions: both, Targets: up},
	}
	e := &env{q: &fakeQueue{}, tags: &fakeTags{}}
	e.m = metrics.New(prometheus.NewRegistry(), metrics.Labels{Webhooks: []string{"dist", "harbor", "hub", "ce"}})
	var q Queue
	if withQueue {
		q = e.q
	}
	e.h = New(hooks, q, WithMetrics(e.m), WithTags(e.tags))
	return e
}

func (e *env) post(target string, body []byte, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

func (e *env) requests(hook, result string) float64 {
	return testutil.ToFloat64(e.m.WebhookRequests.WithLabelValues(hook, result))
}

func (e *env) images(hook, result string) float64 {
	return testutil.ToFloat64(e.m.WebhookImages.WithLabelValues(hook, result))
}

const bearer = "Bearer " + secret

// TestHandlerQueuesPushes: each pushed image becomes one job per registry
// that uses the connector and admits the repository; a retried
// notification is one job.
func TestHandlerQueuesPushes(t *testing.T) {
	e := newEnv(t, true)
	w := e.post("/webhooks/dist", sample(t, "distribution.json"), "Authorization", bearer, "Content-Type", DistributionMediaType)
	if w.Code != http.StatusAccepted {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	want := []string{"hub/library/test:latest@" + distDigest.String(), "mirror/library/test:latest@" + distDigest.String()}
	if got := e.q.got(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("jobs %q, want %q", got, want)
	}
	var sum summary
	if err := json.Unmarshal(w.Body.Bytes(), &sum); err != nil || sum.Queued != 2 || sum.Ignored != 2 {
		t.Errorf("answer %s (%v)", w.Body, err)
	}
	// distribution retries: nothing new is queued.
	w = e.post("/webhooks/dist", sample(t, "distribution.json"), "Authorization", bearer)
	if w.Code != http.StatusAccepted || len(e.q.got()) != 2 {
		t.Fatalf("retry: status %d, jobs %q", w.Code, e.q.got())
	}
	if e.images("dist", "queued") != 2 || e.images("dist", "duplicate") != 2 || e.images("dist", "ignored") != 4 || e.requests("dist", "accepted") != 2 {
		t.Errorf("metrics: queued %v duplicate %v ignored %v accepted %v", e.images("dist", "queued"),
			e.images("dist", "duplicate"), e.images("dist", "ignored"), e.requests("dist", "accepted"))
	}
	// An excluded repository is read, answered 202 and counted.
	body := `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","repository":"private/x","tag":"v1"}}]}`
	if w := e.post("/webhooks/dist", []byte(body), "Authorization", bearer); w.Code != http.StatusAccepted || len(e.q.got()) != 2 {
		t.Fatalf("excluded: status %d, jobs %q", w.Code, e.q.got())
	}
	if e.images("dist", "excluded") != 1 {
		t.Errorf("excluded = %v", e.images("dist", "excluded"))
	}
}

// TestHandlerAuth: Bearer, Harbor's bare Authorization and ?token= work;
// anything else is 401 and queues nothing.
func TestHandlerAuth(t *testing.T) {
	e := newEnv(t, true)
	body := sample(t, "harbor_push.json")
	for _, tc := range []struct {
		name   string
		target string
		hdr    []string
		want   int
	}{
		{"none", "/webhooks/harbor", nil, 401},
		{"wrong bearer", "/webhooks/harbor", []string{"Authorization", "Bearer nope"}, 401},
		{"prefix of secret", "/webhooks/harbor", []string{"Authorization", "Bearer " + secret[:5]}, 401},
		{"basic", "/webhooks/harbor", []string{"Authorization", "Basic " + secret}, 401},
		{"wrong token", "/webhooks/harbor?token=x", nil, 401},
		{"bearer", "/webhooks/harbor", []string{"Authorization", bearer}, 202},
		{"harbor auth header", "/webhooks/harbor", []string{"Authorization", secret}, 202},
		{"token", "/webhooks/harbor?token=" + secret, nil, 202},
	} {
		before := len(e.q.ids)
		w := e.post(tc.target, body, tc.hdr...)
		if w.Code != tc.want {
			t.Errorf("%s: status %d, want %d: %s", tc.name, w.Code, tc.want, w.Body)
		}
		if tc.want == 401 {
			if len(e.q.ids) != before {
				t.Errorf("%s: queued without the secret", tc.name)
			}
			if !strings.Contains(w.Body.String(), `"UNAUTHORIZED"`) || strings.Contains(w.Body.String(), secret) {
				t.Errorf("%s: body %s", tc.name, w.Body)
			}
		}
	}
	if got := e.requests("harbor", "unauthorized"); got != 5 {
		t.Errorf("unauthorized = %v", got)
	}
}

// TestHandlerBadInput: garbage, empty, wrong shape → 400 with an OCI error
// body; over 1 MiB → 413; nothing is queued.
func TestHandlerBadInput(t *testing.T) {
	e := newEnv(t, true)
	for _, tc := range []struct {
		name, hook string
		body       []byte
		want       int
	}{
		{"empty", "dist", nil, 400},
		{"garbage", "dist", []byte{0xff, 0x00, 0x12}, 400},
		{"wrong shape", "harbor", sample(t, "dockerhub.json"), 400},
		{"other format", "hub", sample(t, "harbor_push.json"), 400},
		{"oversized", "dist", append([]byte(`{"events":[`), bytes.Repeat([]byte(" "), MaxBody)...), 413},
	} {
		w := e.post("/webhooks/"+tc.hook, tc.body, "Authorization", bearer)
		var body struct {
			Errors []struct{ Code, Message string }
		}
		if w.Code != tc.want || json.Unmarshal(w.Body.Bytes(), &body) != nil || len(body.Errors) != 1 {
			t.Errorf("%s: status %d, want %d: %s", tc.name, w.Code, tc.want, w.Body)
		}
	}
	if len(e.q.got()) != 0 {
		t.Errorf("queued %q", e.q.got())
	}
	if e.requests("dist", "bad_request") != 2 || e.requests("dist", "too_large") != 1 {
		t.Errorf("metrics bad_request %v too_large %v", e.requests("dist", "bad_request"), e.requests("dist", "too_large"))
	}
	if w := e.post("/webhooks/nope", nil, "Authorization", bearer); w.Code != http.StatusNotFound {
		t.Errorf("unknown webhook: %d", w.Code)
	}
	r := httptest.NewRequest(http.MethodGet, "/webhooks/dist", nil)
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", w.Code)
	}
}

// TestHandlerWithoutQueue: serve without NATS answers 503 with a clear error.
func TestHandlerWithoutQueue(t *testing.T) {
	e := newEnv(t, false)
	w := e.post("/webhooks/dist", sample(t, "distribution.json"), "Authorization", bearer)
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "nats.url") {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	// A queue that fails is 503 too, so the sender retries.
	e = newEnv(t, true)
	e.q.err = errors.New("nats: no responders")
	if w := e.post("/webhooks/dist", sample(t, "distribution.json"), "Authorization", bearer); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("failing queue: %d", w.Code)
	}
	if e.requests("dist", "unavailable") != 1 || e.images("dist", "failed") != 1 {
		t.Errorf("metrics unavailable %v failed %v", e.requests("dist", "unavailable"), e.images("dist", "failed"))
	}
}

// TestHandlerDelete: delete events mark tags stale when the webhook's
// actions include delete, and are ignored otherwise.
func TestHandlerDelete(t *testing.T) {
	e := newEnv(t, true)
	if w := e.post("/webhooks/dist", sample(t, "distribution_delete.json"), "Authorization", bearer); w.Code != http.StatusAccepted {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	want := "hub/library/test:@" + distDigest.String() + " mirror/library/test:@" + distDigest.String() +
		" hub/library/test:old@ mirror/library/test:old@"
	if got := strings.Join(e.tags.got, " "); got != want {
		t.Errorf("expired %q, want %q", got, want)
	}
	if w := e.post("/webhooks/harbor", sample(t, "harbor_delete.json"), "Authorization", bearer); w.Code != http.StatusAccepted {
		t.Fatalf("status %d", w.Code)
	}
	if len(e.tags.got) != 4 || e.images("harbor", "ignored") != 1 {
		t.Errorf("harbor without delete action: expired %q, ignored %v", e.tags.got, e.images("harbor", "ignored"))
	}
	if len(e.q.got()) != 0 {
		t.Errorf("a delete queued %q", e.q.got())
	}
}

// TestJobID: the id depends on registry, repository, tag, digest and stamp.
func TestJobID(t *testing.T) {
	t.Parallel()
	ev := Event{Repository: "a/b", Tag: "v1", Digest: distDigest}
	ids := map[string]bool{JobID("hub", ev): true}
	for _, other := range []Event{{Repository: "a/c", Tag: "v1", Digest: distDigest}, {Repository: "a/b", Tag: "v2", Digest: distDigest},
		{Repository: "a/b", Tag: "v1"}, {Repository: "a/b", Tag: "v1", Digest: distDigest, Stamp: "1"}} {
		ids[JobID("hub", other)] = true
	}
	ids[JobID("mirror", ev)] = true
	if len(ids) != 6 || JobID("hub", ev) != JobID("hub", Event{Action: ActionPush, Repository: "a/b", Tag: "v1", Digest: distDigest}) {
		t.Errorf("ids not distinct or not stable: %v", ids)
	}
}

// BenchmarkWebhookHandler measures a distribution notification from the
// request to its answer (parse, auth, queue into a fake queue).
func BenchmarkWebhookHandler(b *testing.B) {
	e := newEnv(b, true)
	body := sample(b, "distribution.json")
	b.ReportAllocs()
	for b.Loop() {
		w := e.post("/webhooks/dist", body, "Authorization", bearer)
		if w.Code != http.StatusAccepted {
			b.Fatal(w.Code)
		}
	}
}
