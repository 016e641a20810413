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

// FuzzParseMissEvent: a miss event is decoded or refused with
// ErrBadMessage, never a panic; a decoded one survives a JSON round trip.
// (The worker validates its fields before acting on it.)
func FuzzParseMissEvent(f *testing.F) {
	for _, s := range []string{
		`{"registry":"hub","repository":"library/alpine","reference":"3.20","digest":"sha256:` + strings.Repeat("b", 64) +
			`","kind":"manifest","connector":"dockerhub","time":"2025-01-02T03:04:05.123Z","request_id":"r1"}`,
		`{"kind":"blob","time":"2025-01-02T03:04:05+02:00"}`, `{"time":"yesterday"}`, `[]`, `null`, "",
		strings.Repeat(`{"registry":"`, 100),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := ParseMissEvent(data)
		if err != nil {
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("error %v is not ErrBadMessage", err)
			}
			return
		}
		if len(data) > MaxMessageSize {
			t.Fatalf("accepted %d bytes", len(data))
		}
		enc, err := json.Marshal(ev)
		if err != nil {
			return // a time json cannot write (a year past 9999) is the worker's to refuse
		}
		again, err := ParseMissEvent(enc)
		if err != nil {
			t.Fatalf("re-encoded event %s: %v", enc, err)
		}
		if !again.Time.Equal(ev.Time) {
			t.Fatalf("time %v -> %v", ev.Time, again.Time)
		}
		again.Time = ev.Time
		if again != ev {
			t.Fatalf("round trip: %+v -> %s -> %+v", ev, enc, again)
		}
	})
}
