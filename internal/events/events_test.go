package events_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

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

// TestDecode: the one decoder of the work stream picks the message type
// by subject and checks a miss event's fields.
func TestDecode(t *testing.T) {
	subj := events.Subjects{Prefix: "regwarm"}
	d := "sha256:" + strings.Repeat("b", 64)
	miss := subj.Miss("hub")
	for _, tt := range []struct {
		name    string
		subject string
		data    string
		want    events.Message
		bad     string // part of the error text; "" when valid
	}{
		{"sync request", subj.Sync(), "hub/app:v1", events.Message{Sync: &events.SyncRequest{Image: "hub/app:v1"}}, ""},
		{"bad sync request", subj.Sync(), "", events.Message{}, "empty"},
		{"manifest miss", miss, `{"registry":"hub","repository":"app","reference":"v1","digest":"` + d +
			`","kind":"manifest","connector":"up","request_id":"r1"}`,
			events.Message{Miss: &events.Miss{Registry: "hub", Repository: "app", Digest: digest.Digest(d), RequestID: "r1"}}, ""},
		// Which registries exist is the consumer's business.
		{"blob miss of an unknown registry", miss, `{"registry":"nowhere","repository":"app","digest":"` + d + `","kind":"blob"}`,
			events.Message{Miss: &events.Miss{Registry: "nowhere", Repository: "app", Digest: digest.Digest(d), Blob: true}}, ""},
		{"miss without digest", miss, `{"registry":"hub","repository":"app","kind":"blob"}`, events.Message{}, "digest"},
		{"miss with a bad name", miss, `{"registry":"hub","repository":"App","digest":"` + d + `","kind":"blob"}`, events.Message{}, "miss event"},
		{"miss of an unknown kind", miss, `{"registry":"hub","repository":"app","digest":"` + d + `","kind":"tag"}`, events.Message{}, "kind"},
		{"not json", miss, `hub/app:v1`, events.Message{}, "miss event"},
		{"wrong type", miss, `{"registry":7}`, events.Message{}, "miss event"},
		{"too large", miss, `{"registry":"` + strings.Repeat("x", events.MaxMessageSize) + `"}`, events.Message{}, "bytes"},
		{"other subject", "regwarm.events.sync.done", "hub/app:v1", events.Message{}, "unexpected subject"},
	} {
		got, err := subj.Decode(tt.subject, []byte(tt.data))
		if tt.bad != "" {
			if err == nil || !errors.Is(err, events.ErrBadMessage) || fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), tt.bad) {
				t.Errorf("%s: err %v, want ErrBadMessage with %q", tt.name, err, tt.bad)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}
