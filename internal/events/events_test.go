package events_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/fault"
)

func TestParseSyncRequest(t *testing.T) {
	yes := true
	for _, tt := range []struct {
		name string
		data string
		want events.SyncRequest // zero when an error is expected
		bad  string             // part of the error text
	}{
		{"plain name", "docker.io/library/alpine:3.20", events.SyncRequest{Image: "docker.io/library/alpine:3.20"}, ""},
		{"plain name with spaces around", "  hub/app:v1\n", events.SyncRequest{Image: "hub/app:v1"}, ""},
		{"json", `{"image":"hub/app:v1","platforms":["linux/amd64","linux/arm64/v8"],"referrers":true}`,
			events.SyncRequest{Image: "hub/app:v1", Platforms: []string{"linux/amd64", "linux/arm64/v8"}, Referrers: &yes}, ""},
		{"json blob", `{"image":"hub/app","blob":"sha256:` + strings.Repeat("a", 64) + `"}`,
			events.SyncRequest{Image: "hub/app", Blob: "sha256:" + strings.Repeat("a", 64)}, ""},
		// The host is resolved against the configuration later (jobs):
		// the decoder accepts any well-formed one.
		{"unknown host is well-formed", "registry.invalid.example/app:v1", events.SyncRequest{Image: "registry.invalid.example/app:v1"}, ""},
		{"empty", "  \n", events.SyncRequest{}, "empty"},
		{"not utf-8", "hub/app:\xff", events.SyncRequest{}, "UTF-8"},
		{"too large", strings.Repeat("a", events.MaxMessageSize+1), events.SyncRequest{}, "limit"},
		{"unknown field", `{"image":"hub/app:v1","force":true}`, events.SyncRequest{}, "force"},
		{"trailing data", `{"image":"hub/app:v1"} {}`, events.SyncRequest{}, "trailing"},
		{"broken json", `{"image":`, events.SyncRequest{}, "malformed"},
		{"bad image", "Hub/APP::v1", events.SyncRequest{}, "image"},
		{"bad platform", `{"image":"hub/app:v1","platforms":["linux"]}`, events.SyncRequest{}, "platforms[0]"},
		{"bad blob digest", `{"image":"hub/app","blob":"sha256:zz"}`, events.SyncRequest{}, "blob"},
	} {
		got, err := events.ParseSyncRequest([]byte(tt.data))
		if tt.bad == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
				continue
			}
			if got.Image != tt.want.Image || strings.Join(got.Platforms, ",") != strings.Join(tt.want.Platforms, ",") ||
				got.Blob != tt.want.Blob || (got.Referrers == nil) != (tt.want.Referrers == nil) {
				t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted as %+v", tt.name, got)
			continue
		}
		if !errors.Is(err, events.ErrBadMessage) || fault.Of(err) != fault.Invalid {
			t.Errorf("%s: %v is not ErrBadMessage of kind invalid", tt.name, err)
		}
		if !strings.Contains(err.Error(), tt.bad) {
			t.Errorf("%s: error %q does not mention %q", tt.name, err, tt.bad)
		}
	}
}

func TestParseMissEvent(t *testing.T) {
	for _, tt := range []struct {
		name string
		data string
		want events.MissEvent
		bad  bool
	}{
		{"valid", `{"registry":"hub","repository":"app","reference":"v1","digest":"sha256:` + strings.Repeat("b", 64) +
			`","kind":"manifest","connector":"up","request_id":"r1"}`,
			events.MissEvent{Registry: "hub", Repository: "app", Reference: "v1", Digest: "sha256:" + strings.Repeat("b", 64),
				Kind: "manifest", Connector: "up", RequestID: "r1"}, false},
		// Which registries exist is the consumer's business.
		{"unknown registry decodes", `{"registry":"nowhere","repository":"app","kind":"blob"}`,
			events.MissEvent{Registry: "nowhere", Repository: "app", Kind: "blob"}, false},
		{"not json", `hub/app:v1`, events.MissEvent{}, true},
		{"wrong type", `{"registry":7}`, events.MissEvent{}, true},
		{"too large", `{"registry":"` + strings.Repeat("x", events.MaxMessageSize) + `"}`, events.MissEvent{}, true},
	} {
		got, err := events.ParseMissEvent([]byte(tt.data))
		if tt.bad {
			if err == nil || !errors.Is(err, events.ErrBadMessage) || fault.Of(err) != fault.Invalid {
				t.Errorf("%s: err %v, want ErrBadMessage", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}
