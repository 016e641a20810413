package daemon

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// TestPermanentFailure pins the worker's switch from error kinds to term
// (permanent) or nak (retried).
func TestPermanentFailure(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		term bool
	}{
		{"bad message", fmt.Errorf("%w: empty", events.ErrBadMessage), true},
		{"unknown registry", fmt.Errorf("%w: x", jobs.ErrUnknownRegistry), true},
		{"marked permanent", fmt.Errorf("%w: %w", jobs.ErrPermanent, errors.New("x")), true},
		{"bad image", ref.ErrInvalidImage, true},
		{"manifest unknown", fmt.Errorf("get: %w", store.ErrManifestUnknown), true},
		{"upstream 404", &connector.Error{Status: 404}, true},
		{"excluded", &connector.Error{Excluded: true, Err: connector.ErrExcluded}, true},
		{"upstream 401", &connector.Error{Status: 401}, true},
		{"upstream 403", &connector.Error{Status: 403}, true},
		{"upstream 429", &connector.Error{Status: 429, RetryAfter: time.Minute, Temporary: true}, false},
		{"upstream 503", &connector.Error{Status: 503, Temporary: true}, false},
		{"no answer", &connector.Error{Temporary: true, Err: context.DeadlineExceeded}, false},
		{"lying upstream", fmt.Errorf("%w: %w", connector.ErrMismatch, store.ErrDigestMismatch), false},
		{"corrupt stored content", fmt.Errorf("%w: %w", store.ErrCorrupt, store.ErrDigestMismatch), false},
		{"disk error", errors.New("write /data: no space left on device"), false},
		{"canceled", context.Canceled, false},
		{"upstream manifest over the cap", &connector.Error{Status: 200, Temporary: false, Err: manifest.ErrTooManyReferences}, true},
		{"refused redirect", &connector.Error{Err: connector.ErrRefused}, true},
	} {
		if got := permanentFailure(tt.err); got != tt.term {
			t.Errorf("%s: permanent = %v, want %v", tt.name, got, tt.term)
		}
	}
	for _, tt := range []struct {
		name       string
		err        error
		deliveries uint64
		want       ackAction
	}{
		{"done", nil, 1, ackDone},
		{"permanent", store.ErrManifestUnknown, 1, ackTerm},
		{"temporary", &connector.Error{Status: 503, Temporary: true}, 1, ackNak},
		{"temporary, last delivery", &connector.Error{Status: 503, Temporary: true}, 5, ackTerm},
	} {
		if got, _ := settle(tt.err, tt.deliveries, 5); got != tt.want {
			t.Errorf("%s: settled %v, want %v", tt.name, got, tt.want)
		}
	}
	if d := retryDelay(1, &connector.Error{Status: 429, RetryAfter: 10 * time.Minute}); d != 10*time.Minute {
		t.Errorf("retry delay %v, want the upstream's 10m", d)
	}
}

// TestUnknownHostIsTerminated: a well-formed sync request naming a host no
// connector serves decodes, fails to resolve, and is terminated, not
// retried.
func TestUnknownHostIsTerminated(t *testing.T) {
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: hub, default: true, connectors: [up]}
connectors:
  - {name: up, url: "http://127.0.0.1:1", host: docker.io}
`))
	if err != nil {
		t.Fatal(err)
	}
	subj := events.Subjects{Prefix: "regwarm"}
	w := &Worker{bus: &bus{subj: subj}, syncer: jobs.NewSyncer(cfg, nil)}
	for _, tt := range []struct {
		msg     string
		resolve bool
	}{
		{"docker.io/library/alpine:3.20", true},
		{"hub/library/alpine:3.20", true},
		{"registry.invalid.example/app:v1", false},
		{"nowhere/app:v1", false}, // no registry named "nowhere"
	} {
		_, _, err := w.target(subj.Sync(), []byte(tt.msg), "")
		if (err == nil) != tt.resolve {
			t.Errorf("%s: resolve error %v, want resolved=%v", tt.msg, err, tt.resolve)
		}
		if err != nil && (!errors.Is(err, jobs.ErrUnknownRegistry) || !permanentFailure(err)) {
			t.Errorf("%s: %v is not a permanent unknown-registry failure", tt.msg, err)
		}
	}
}
