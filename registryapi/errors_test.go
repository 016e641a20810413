package registryapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// TestClassify pins the one table from error kinds to OCI codes.
func TestClassify(t *testing.T) {
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	excluded := connector.NewLocal("mirror", "local", connector.Filter{Exclude: []string{"secret/**"}}, st)
	_, exclErr := excluded.GetManifest(context.Background(), "secret/app", "v1")
	if exclErr == nil {
		t.Fatal("an excluded repository was read")
	}
	manifestRoute, blobRoute := route{kind: routeManifest}, route{kind: routeBlob}
	for _, tt := range []struct {
		name   string
		err    error
		rt     route
		code   string
		status int
	}{
		{"blob unknown", fmt.Errorf("x: %w", store.ErrBlobUnknown), blobRoute, "BLOB_UNKNOWN", 404},
		{"tag unknown", store.ErrTagUnknown, manifestRoute, "MANIFEST_UNKNOWN", 404},
		{"upstream 404 blob", &connector.Error{Kind: connector.KindBlob, Status: 404, Err: connector.ErrNotFound}, blobRoute, "BLOB_UNKNOWN", 404},
		{"upstream 404 manifest", &connector.Error{Kind: connector.KindManifest, Status: 404}, manifestRoute, "MANIFEST_UNKNOWN", 404},
		{"excluded repository", exclErr, manifestRoute, "NAME_UNKNOWN", 404},
		{"excluded, through the cache", fmt.Errorf("%w: %w", store.ErrManifestUnknown, exclErr), manifestRoute, "NAME_UNKNOWN", 404},
		{"upstream 401", &connector.Error{Status: 401}, manifestRoute, "DENIED", 403},
		{"upstream 429", &connector.Error{Status: 429, RetryAfter: 1500 * time.Millisecond, Err: connector.ErrRateLimit}, blobRoute, "TOOMANYREQUESTS", 429},
		{"upstream 500", &connector.Error{Status: 500, Temporary: true, Message: "secret internals"}, blobRoute, "UNAVAILABLE", 502},
		{"upstream unusable manifest", &connector.Error{Kind: connector.KindManifest, Err: manifest.ErrInvalid}, manifestRoute, "UNAVAILABLE", 502},
		{"lying upstream", fmt.Errorf("%w: %w", connector.ErrMismatch, store.ErrDigestMismatch), blobRoute, "UNAVAILABLE", 502},
		{"client digest", fmt.Errorf("%w: sha256:zz", ref.ErrInvalidDigest), manifestRoute, "DIGEST_INVALID", 400},
		{"client upload mismatch", store.ErrDigestMismatch, blobRoute, "DIGEST_INVALID", 400},
		{"bad manifest pushed", manifest.ErrInvalid, manifestRoute, "MANIFEST_INVALID", 400},
		{"corrupt stored content", fmt.Errorf("%w: %w: stored manifest x hashes to y", store.ErrCorrupt, store.ErrDigestMismatch), manifestRoute, "UNKNOWN", 500},
		{"uncoded", errors.New("open /var/lib/regwarm/x: permission denied"), blobRoute, "UNKNOWN", 500},
		{"canceled", context.Canceled, blobRoute, "UNAVAILABLE", 502},
	} {
		ae := classify(tt.err, tt.rt)
		if ae.code.Name != tt.code || ae.code.Status != tt.status {
			t.Errorf("%s: %s %d, want %s %d", tt.name, ae.code.Name, ae.code.Status, tt.code, tt.status)
		}
		if ae.code.Status >= 500 && (strings.Contains(ae.message, "hashes") || strings.Contains(ae.message, "secret") ||
			strings.Contains(ae.message, "/var/lib")) {
			t.Errorf("%s: message leaks internals: %q", tt.name, ae.message)
		}
	}
	ae := classify(&connector.Error{Status: http.StatusTooManyRequests, RetryAfter: 1500 * time.Millisecond}, blobRoute)
	if got := ae.header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q, want 2", got)
	}
}
