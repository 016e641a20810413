// Package webhook turns upstream push notifications (distribution's
// notification envelope, Harbor's and Docker Hub's webhooks, CloudEvents)
// into sync jobs: it parses the payloads, checks the shared secret, and
// queues one regwarm.sync message per pushed image and registry.
package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/ref"
)

// ErrPayload is returned for a payload that cannot be read: not JSON, or
// not the shape its format has.
var ErrPayload = errors.New("unreadable webhook payload")

// Actions an event asks for.
const (
	ActionPush   = config.WebhookPush
	ActionDelete = config.WebhookDelete
)

// Event is one image a notification names.
type Event struct {
	Action     string // push | delete
	Repository string // upstream repository name
	Tag        string // "" when the notification names none
	Digest     digest.Digest
	// Stamp tells apart two pushes of a tag without a digest (Docker
	// Hub's pushed_at); it is part of the job's deduplication id.
	Stamp string
}

// Notification is what a payload says: the events regwarm can act on, and
// how many it read but ignores (pulls, blob pushes, other event types) or
// cannot use (an invalid repository name, tag or digest).
type Notification struct {
	Events  []Event
	Ignored int
	Invalid int
}

// add validates e and keeps it, or counts it invalid.
func (n *Notification) add(e Event) {
	if ref.ValidName(e.Repository) != nil {
		n.Invalid++
		return
	}
	if e.Tag != "" && ref.ValidTag(e.Tag) != nil {
		if _, err := ref.ParseDigest(e.Tag); err == nil && (e.Digest == "" || e.Digest.String() == e.Tag) {
			// Harbor names an artifact pushed by digest with its digest as tag.
			e.Digest, e.Tag = digest.Digest(e.Tag), ""
		} else {
			n.Invalid++
			return
		}
	}
	if e.Digest != "" {
		if _, err := ref.ParseDigest(e.Digest.String()); err != nil {
			n.Invalid++
			return
		}
	}
	if e.Tag == "" && e.Digest == "" {
		n.Invalid++
		return
	}
	n.Events = append(n.Events, e)
}

// Parse reads a payload of format (config.WebhookDistribution, …).
func Parse(format string, data []byte) (Notification, error) {
	switch format {
	case config.WebhookDistribution:
		return ParseDistribution(data)
	case config.WebhookHarbor:
		return ParseHarbor(data)
	case config.WebhookDockerHub:
		return ParseDockerHub(data)
	case config.WebhookCloudEvents:
		return ParseCloudEvents(data)
	}
	return Notification{}, fmt.Errorf("unknown webhook format %q", format)
}

// decode reads one JSON value into v, refusing trailing data.
func decode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrPayload, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrPayload)
	}
	return nil
}

// DistributionMediaType is the media type of distribution's notification
// envelope.
const DistributionMediaType = "application/vnd.docker.distribution.events.v1+json"

// manifestTypes are the media types a distribution event target has when
// a manifest (not a blob) was pushed or deleted.
// indexTypes are the manifest types that list other manifests.
var indexTypes = map[string]bool{
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.oci.image.index.v1+json":                   true,
}

var manifestTypes = map[string]bool{
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.docker.distribution.manifest.v1+prettyjws": true,
	"application/vnd.docker.distribution.manifest.v1+json":      true,
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
	"application/vnd.oci.artifact.manifest.v1+json":             true,
}

type distributionEnvelope struct {
	Events *[]struct {
		Action string `json:"action"`
		Target struct {
			MediaType  string `json:"mediaType"`
			Digest     string `json:"digest"`
			Repository string `json:"repository"`
			Tag        string `json:"tag"`
		} `json:"target"`
	} `json:"events"`
}

// ParseDistribution reads distribution's notification envelope
// ({"events": […]}). Manifest pushes become push events, manifest and tag
// deletes delete events; blob pushes, pulls and mounts are ignored, and so
// are image manifests pushed without a tag: those are the platforms of an
// index whose own (tagged) push follows, and syncing them one by one
// would bypass the registry's sync.platforms.
func ParseDistribution(data []byte) (Notification, error) {
	var env distributionEnvelope
	if err := decode(data, &env); err != nil {
		return Notification{}, err
	}
	if env.Events == nil {
		return Notification{}, fmt.Errorf("%w: no events array (want a %s envelope)", ErrPayload, DistributionMediaType)
	}
	var n Notification
	for _, ev := range *env.Events {
		t := ev.Target
		switch {
		case ev.Action == "push" && manifestTypes[t.MediaType] && (t.Tag != "" || indexTypes[t.MediaType]):
			n.add(Event{Action: ActionPush, Repository: t.Repository, Tag: t.Tag, Digest: digest.Digest(t.Digest)})
		case ev.Action == "delete" && (t.Tag != "" || manifestTypes[t.MediaType] || t.MediaType == ""):
			// distribution's delete events name a tag, or a manifest digest
			// (blob deletes have a blob media type).
			n.add(Event{Action: ActionDelete, Repository: t.Repository, Tag: t.Tag, Digest: digest.Digest(t.Digest)})
		default:
			n.Ignored++
		}
	}
	return n, nil
}

// harborData is the event_data of Harbor's default payload and the data
// of its CloudEvents.
type harborData struct {
	Resources []struct {
		Digest string `json:"digest"`
		Tag    string `json:"tag"`
	} `json:"resources"`
	Repository *struct {
		Name         string `json:"name"`
		Namespace    string `json:"namespace"`
		RepoFullName string `json:"repo_full_name"`
	} `json:"repository"`
}

// add turns each resource into an event of action.
func (d *harborData) add(n *Notification, action string) error {
	if d.Repository == nil {
		return fmt.Errorf("%w: no repository in the event data", ErrPayload)
	}
	repo := d.Repository.RepoFullName
	if repo == "" && d.Repository.Namespace != "" {
		repo = d.Repository.Namespace + "/" + d.Repository.Name
	}
	for _, r := range d.Resources {
		n.add(Event{Action: action, Repository: repo, Tag: r.Tag, Digest: digest.Digest(r.Digest)})
	}
	return nil
}

// ParseHarbor reads Harbor's default webhook payload: PUSH_ARTIFACT and
// DELETE_ARTIFACT act, every other type is ignored.
func ParseHarbor(data []byte) (Notification, error) {
	var p struct {
		Type      string      `json:"type"`
		EventData *harborData `json:"event_data"`
	}
	if err := decode(data, &p); err != nil {
		return Notification{}, err
	}
	if p.Type == "" || p.EventData == nil {
		return Notification{}, fmt.Errorf("%w: want a Harbor payload with type and event_data", ErrPayload)
	}
	var n Notification
	var err error
	switch p.Type {
	case "PUSH_ARTIFACT":
		err = p.EventData.add(&n, ActionPush)
	case "DELETE_ARTIFACT":
		err = p.EventData.add(&n, ActionDelete)
	default:
		n.Ignored++
	}
	return n, err
}

// ParseDockerHub reads Docker Hub's push webhook. It carries a tag and no
// digest; official images (a repo_name without a namespace) are library/.
func ParseDockerHub(data []byte) (Notification, error) {
	var p struct {
		PushData *struct {
			PushedAt json.Number `json:"pushed_at"`
			Tag      string      `json:"tag"`
		} `json:"push_data"`
		Repository *struct {
			RepoName string `json:"repo_name"`
		} `json:"repository"`
	}
	if err := decode(data, &p); err != nil {
		return Notification{}, err
	}
	if p.PushData == nil || p.Repository == nil || p.Repository.RepoName == "" {
		return Notification{}, fmt.Errorf("%w: want a Docker Hub payload with push_data and repository.repo_name", ErrPayload)
	}
	var n Notification
	if p.PushData.Tag == "" {
		n.Ignored++ // an automated build without a tag names nothing to warm
		return n, nil
	}
	repo := p.Repository.RepoName
	if !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	n.add(Event{Action: ActionPush, Repository: repo, Tag: p.PushData.Tag, Stamp: p.PushData.PushedAt.String()})
	return n, nil
}

// CloudEvents types that act: Harbor's artifact events.
const (
	CloudEventPushed  = "harbor.artifact.pushed"
	CloudEventDeleted = "harbor.artifact.deleted"
)

type cloudEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
}

// ParseCloudEvents reads CloudEvents 1.0 in structured JSON mode, one event
// or a batch (a JSON array). harbor.artifact.pushed and
// harbor.artifact.deleted act (their data is Harbor's event_data); every
// other type is ignored.
func ParseCloudEvents(data []byte) (Notification, error) {
	var list []cloudEvent
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		if err := decode(data, &list); err != nil {
			return Notification{}, err
		}
	} else {
		var one cloudEvent
		if err := decode(data, &one); err != nil {
			return Notification{}, err
		}
		list = []cloudEvent{one}
	}
	var n Notification
	for i, ev := range list {
		if ev.SpecVersion != "1.0" || ev.ID == "" || ev.Source == "" || ev.Type == "" {
			return Notification{}, fmt.Errorf("%w: event %d: want CloudEvents 1.0 with specversion, id, source and type", ErrPayload, i)
		}
		action := ""
		switch ev.Type {
		case CloudEventPushed:
			action = ActionPush
		case CloudEventDeleted:
			action = ActionDelete
		default:
			n.Ignored++
			continue
		}
		var d harborData
		if len(ev.Data) == 0 {
			return Notification{}, fmt.Errorf("%w: event %d (%s) has no data", ErrPayload, i, ev.Type)
		}
		if err := decode(ev.Data, &d); err != nil {
			return Notification{}, fmt.Errorf("event %d data: %w", i, err)
		}
		if err := d.add(&n, action); err != nil {
			return Notification{}, fmt.Errorf("event %d: %w", i, err)
		}
	}
	return n, nil
}
