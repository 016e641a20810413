package events

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/internal/ref"
)

// FuzzParseSyncRequest: whatever arrives on regwarm.sync is either a
// request naming a valid image, platforms and blob, or ErrBadMessage;
// never a panic. An accepted request survives a JSON round trip.
func FuzzParseSyncRequest(f *testing.F) {
	d := "sha256:" + strings.Repeat("a", 64)
	for _, s := range []string{
		"docker.io/library/alpine:3.20", " hub/library/alpine\n", "hub/a/b:v1@" + d,
		`{"image":"hub/x:1","platforms":["linux/amd64","linux/arm/v7"],"referrers":false}`,
		`{"image":"hub/x@` + d + `","blob":"` + d + `"}`,
		`{"image":"hub/x:1","extra":1}`, `{"image":"hub/x:1"} {}`, `{"image":"hub/x:1","platforms":["linux"]}`,
		"http://evil.example/x:y", "", "{", "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := ParseSyncRequest(data)
		if err != nil {
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("error %v is not ErrBadMessage", err)
			}
			return
		}
		if len(req.Image) > ref.MaxImageLength {
			t.Fatalf("image of %d bytes accepted", len(req.Image))
		}
		if _, err := ref.ParseImage(req.Image); err != nil {
			t.Fatalf("accepted image %q: %v", req.Image, err)
		}
		for _, p := range req.Platforms {
			if !validPlatform(p) {
				t.Fatalf("accepted platform %q", p)
			}
		}
		if req.Blob != "" {
			if _, err := ref.ParseDigest(req.Blob); err != nil {
				t.Fatalf("accepted blob %q", req.Blob)
			}
		}
		enc, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseSyncRequest(enc)
		if err != nil {
			t.Fatalf("re-encoded request %s: %v", enc, err)
		}
		if len(req.Platforms) == 0 {
			req.Platforms = nil // omitempty drops an empty list
		}
		if !reflect.DeepEqual(again, req) {
			t.Fatalf("round trip: %+v -> %s -> %+v", req, enc, again)
		}
	})
}

// FuzzDecode: whatever arrives on the work stream, under either subject,
// is a checked message or ErrBadMessage, never a panic; a decoded miss
// survives a JSON round trip.
func FuzzDecode(f *testing.F) {
	subj := Subjects{Prefix: "regwarm"}
	d := "sha256:" + strings.Repeat("b", 64)
	for _, s := range []string{
		`{"registry":"hub","repository":"library/alpine","reference":"3.20","digest":"` + d +
			`","kind":"manifest","connector":"dockerhub","time":"2025-01-02T03:04:05.123Z","request_id":"r1"}`,
		`{"registry":"hub","repository":"a/b","digest":"` + d + `","kind":"blob"}`,
		`{"kind":"blob","time":"2025-01-02T03:04:05+02:00"}`, `{"time":"yesterday"}`, `[]`, `null`, "",
		strings.Repeat(`{"registry":"`, 100), "hub/app:v1", `{"image":"hub/x:1","blob":"` + d + `"}`,
	} {
		f.Add(false, []byte(s))
		f.Add(true, []byte(s))
	}
	f.Fuzz(func(t *testing.T, sync bool, data []byte) {
		subject := subj.Miss("hub")
		if sync {
			subject = subj.Sync()
		}
		msg, err := subj.Decode(subject, data)
		if err != nil {
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("error %v is not ErrBadMessage", err)
			}
			return
		}
		if len(data) > MaxMessageSize {
			t.Fatalf("accepted %d bytes", len(data))
		}
		if (msg.Sync == nil) == (msg.Miss == nil) || (msg.Sync != nil) != sync {
			t.Fatalf("subject %s decoded as %+v", subject, msg)
		}
		m := msg.Miss
		if m == nil {
			return
		}
		if _, err := ref.ParseDigest(m.Digest.String()); err != nil {
			t.Fatalf("accepted digest %q", m.Digest)
		}
		if err := ref.ValidName(m.Repository); err != nil {
			t.Fatalf("accepted repository %q", m.Repository)
		}
		kind := KindManifest
		if m.Blob {
			kind = KindBlob
		}
		enc, err := json.Marshal(MissEvent{Registry: m.Registry, Repository: m.Repository, Digest: m.Digest.String(),
			Kind: kind, RequestID: m.RequestID})
		if err != nil {
			t.Fatal(err)
		}
		again, err := subj.Decode(subject, enc)
		if err != nil {
			t.Fatalf("re-encoded event %s: %v", enc, err)
		}
		if !reflect.DeepEqual(again, msg) {
			t.Fatalf("round trip: %+v -> %s -> %+v", m, enc, again.Miss)
		}
	})
}
