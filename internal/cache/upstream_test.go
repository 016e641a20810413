package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/connector"
)

// TestUpstreamCredentials pulls from an upstream that requires Basic auth,
// with the password from an environment variable, and checks that a wrong
// password fails without the secret showing in the error.
func TestUpstreamCredentials(t *testing.T) {
	const pass = "s3cr3t-Pa55"
	t.Setenv("REGWARM_TEST_PASSWD", pass)
	const cfg = `
registries:
  - {name: hub, connectors: [up]}
connectors:
  - {name: up, url: "UP", username: puller, password_env: REGWARM_TEST_PASSWD}
`
	f := newFixture(t, cfg)
	f.up.RequireBasic("puller", pass)
	img := f.up.AddImage("private/app", "v1", 2000)
	if err := f.pull(context.Background(), hub("private/app"), "v1", img); err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}

	wrong := newFixture(t, cfg)
	wrong.up.RequireBasic("puller", "another-password")
	wrong.up.AddImage("private/app", "v1", 2000)
	_, err := wrong.serve().Tag(context.Background(), hub("private/app"), "v1")
	var ce *connector.Error
	if !errors.As(err, &ce) || ce.Status != 401 {
		t.Fatalf("wrong password: %v", err)
	}
	if strings.Contains(fmt.Sprintf("%v %+v", err, ce), pass) {
		t.Fatal("the password appears in the error")
	}
}

func TestRateLimitRemainingMetric(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	f.up.SetHeader("RateLimit-Remaining", "76;w=21600")
	img := f.up.AddImage("app", "v1", 100)
	if err := f.pull(context.Background(), hub("app"), "v1", img); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(f.m.UpstreamRateLimit.WithLabelValues("up")); got != 76 {
		t.Fatalf("rate limit remaining %v, want 76", got)
	}
}

func TestReferrersPulledThrough(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	img := f.up.AddImage("app", "v1", 100)
	emptyCfg := f.up.AddBlob("app", []byte("{}"))
	sig := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig",`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[],`+
		`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d}}`, emptyCfg, img.Digest, len(img.Manifest)))
	sd := f.up.AddManifest("app", "", "application/vnd.oci.image.manifest.v1+json", sig)
	ctx := context.Background()
	refs, err := f.serve().Referrers(ctx, hub("app"), img.Digest)
	if err != nil || len(refs) != 1 || refs[0].Digest != sd || refs[0].ArtifactType != "application/vnd.example.sig" {
		t.Fatalf("referrers %+v, %v", refs, err)
	}
	m, err := f.serve().Manifest(ctx, hub("app"), sd)
	if err != nil || string(m.Data) != string(sig) {
		t.Fatalf("referrer manifest: %v", err)
	}
	// Once fetched, it is listed from the store even with the upstream down.
	f.up.SetDown(true)
	refs, err = f.serve().Referrers(ctx, hub("app"), img.Digest)
	if err != nil || len(refs) != 1 || refs[0].Digest != sd {
		t.Fatalf("referrers with the upstream down: %+v, %v", refs, err)
	}
}
