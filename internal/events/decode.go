package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
)

// Message is a decoded message of the work stream: exactly one of Sync
// and Miss is set.
type Message struct {
	Sync *SyncRequest
	Miss *Miss
}

// Miss is what a worker needs of a miss event, its fields checked: a
// valid repository name, digest and kind. Whether the registry exists is
// the consumer's business.
type Miss struct {
	Registry   string
	Repository string
	Digest     digest.Digest
	Blob       bool // a blob miss; a manifest miss otherwise
	RequestID  string
}

// Decode decodes a message of the work stream by its subject: a sync
// request on s.Sync(), a miss event on s.Miss(registry). Any other subject
// and any malformed message is ErrBadMessage.
func (s Subjects) Decode(subject string, data []byte) (Message, error) {
	if subject == s.Sync() {
		req, err := ParseSyncRequest(data)
		if err != nil {
			return Message{}, err
		}
		return Message{Sync: &req}, nil
	}
	if !strings.HasPrefix(subject, strings.TrimSuffix(s.Misses(), ">")) {
		return Message{}, fmt.Errorf("%w: unexpected subject %q", ErrBadMessage, subject)
	}
	ev, err := parseMissEvent(data)
	if err != nil {
		return Message{}, err
	}
	d, err := ref.ParseDigest(ev.Digest)
	if err != nil {
		return Message{}, fmt.Errorf("%w: miss event digest: %v", ErrBadMessage, err)
	}
	if err := ref.ValidName(ev.Repository); err != nil {
		return Message{}, fmt.Errorf("%w: miss event: %v", ErrBadMessage, err)
	}
	m := &Miss{Registry: ev.Registry, Repository: ev.Repository, Digest: d, RequestID: ev.RequestID}
	switch ev.Kind {
	case KindBlob:
		m.Blob = true
	case KindManifest:
	default:
		return Message{}, fmt.Errorf("%w: miss event kind %q", ErrBadMessage, ev.Kind)
	}
	return Message{Miss: m}, nil
}

// parseMissEvent decodes a miss event (at most MaxMessageSize bytes)
// without checking its fields.
func parseMissEvent(data []byte) (MissEvent, error) {
	var ev MissEvent
	if len(data) > MaxMessageSize {
		return ev, fmt.Errorf("%w: miss event of %d bytes", ErrBadMessage, len(data))
	}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&ev); err != nil {
		return ev, fmt.Errorf("%w: miss event: %v", ErrBadMessage, err)
	}
	return ev, nil
}

// ParseSyncRequest decodes a sync message: a plain image name, or a JSON
// object {"image": …, "platforms": […], "referrers": bool}.
func ParseSyncRequest(data []byte) (SyncRequest, error) {
	if len(data) > MaxMessageSize {
		return SyncRequest{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadMessage, len(data), MaxMessageSize)
	}
	if !utf8.Valid(data) {
		return SyncRequest{}, fmt.Errorf("%w: not UTF-8 text", ErrBadMessage)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return SyncRequest{}, fmt.Errorf("%w: empty message", ErrBadMessage)
	}
	var req SyncRequest
	if trimmed[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return SyncRequest{}, fmt.Errorf("%w: %v", ErrBadMessage, err)
		}
		if dec.More() {
			return SyncRequest{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadMessage)
		}
	} else {
		req.Image = string(trimmed)
	}
	if _, err := ref.ParseImage(req.Image); err != nil {
		return SyncRequest{}, fmt.Errorf("%w: image: %v", ErrBadMessage, err)
	}
	for i, p := range req.Platforms {
		if !validPlatform(p) {
			return SyncRequest{}, fmt.Errorf("%w: platforms[%d]: %q is not os/arch[/variant]", ErrBadMessage, i, p)
		}
	}
	if req.Blob != "" {
		if _, err := ref.ParseDigest(req.Blob); err != nil {
			return SyncRequest{}, fmt.Errorf("%w: blob: %v", ErrBadMessage, err)
		}
	}
	return req, nil
}

func validPlatform(p string) bool {
	parts := strings.Split(p, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return false
	}
	for _, s := range parts {
		if s == "" || len(s) > 32 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
			return false
		}
	}
	return true
}
