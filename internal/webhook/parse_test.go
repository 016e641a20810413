package webhook

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
)

const (
	distDigest   = digest.Digest("sha256:c3b3692957d439ac1928219a83fac91e7bf96c153725526874673ae1f2023f8d")
	harborDigest = digest.Digest("sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4")
)

func sample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseSamples reads payloads written from each format's public
// documentation.
func TestParseSamples(t *testing.T) {
	t.Parallel()
	alpine := Event{Repository: "library/alpine", Tag: "3.17", Digest: harborDigest}
	push, del := alpine, alpine
	push.Action, del.Action = ActionPush, ActionDelete
	tests := []struct {
		format, file string
		want         Notification
	}{
		{config.WebhookDistribution, "distribution.json", Notification{Ignored: 2, // the blob push and the pull
			Events: []Event{{Action: ActionPush, Repository: "library/test", Tag: "latest", Digest: distDigest}}}},
		{config.WebhookDistribution, "distribution_delete.json", Notification{Events: []Event{
			{Action: ActionDelete, Repository: "library/test", Digest: distDigest},
			{Action: ActionDelete, Repository: "library/test", Tag: "old"}}}},
		{config.WebhookHarbor, "harbor_push.json", Notification{Events: []Event{push}}},
		{config.WebhookHarbor, "harbor_delete.json", Notification{Events: []Event{del}}},
		{config.WebhookHarbor, "harbor_pull.json", Notification{Ignored: 1}},
		{config.WebhookCloudEvents, "cloudevents_push.json", Notification{Events: []Event{push}}},
		{config.WebhookCloudEvents, "cloudevents_deleted.json", Notification{Events: []Event{del}}},
		{config.WebhookDockerHub, "dockerhub.json", Notification{Events: []Event{
			{Action: ActionPush, Repository: "svendowideit/testhook", Tag: "latest", Stamp: "1417566161"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tt.format, sample(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestParseOddInput checks payloads that are readable but odd, and
// payloads that are not readable at all.
func TestParseOddInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, format, body string
		want               Notification
		bad                bool
	}{
		{"empty", config.WebhookDistribution, "", Notification{}, true},
		{"garbage", config.WebhookHarbor, "\xff\xfe{", Notification{}, true},
		{"array for envelope", config.WebhookDistribution, `[1,2]`, Notification{}, true},
		{"no events", config.WebhookDistribution, `{"foo": 1}`, Notification{}, true},
		{"trailing data", config.WebhookDistribution, `{"events": []} {}`, Notification{}, true},
		{"events not array", config.WebhookDistribution, `{"events": {}}`, Notification{}, true},
		{"zero events", config.WebhookDistribution, `{"events": []}`, Notification{}, false},
		{"bad repo", config.WebhookDistribution, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"../etc","tag":"x"}}]}`,
			Notification{Invalid: 1}, false},
		{"bad digest", config.WebhookDistribution, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","repository":"a/b","digest":"md5:x"}}]}`,
			Notification{Invalid: 1}, false},
		{"platform manifest by digest ignored", config.WebhookDistribution, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a/b","digest":"` + distDigest.String() + `"}}]}`,
			Notification{Ignored: 1}, false},
		{"index by digest", config.WebhookDistribution, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","repository":"a/b","digest":"` + distDigest.String() + `"}}]}`,
			Notification{Events: []Event{{Action: ActionPush, Repository: "a/b", Digest: distDigest}}}, false},
		{"neither tag nor digest", config.WebhookDistribution, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","repository":"a/b"}}]}`,
			Notification{Invalid: 1}, false},
		{"mount ignored", config.WebhookDistribution, `{"events":[{"action":"mount","target":{"mediaType":"application/octet-stream","repository":"a/b"}}]}`,
			Notification{Ignored: 1}, false},
		{"harbor digest as tag", config.WebhookHarbor, `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"` + harborDigest.String() + `","tag":"` + harborDigest.String() + `"}],"repository":{"name":"b","namespace":"a"}}}`,
			Notification{Events: []Event{{Action: ActionPush, Repository: "a/b", Digest: harborDigest}}}, false},
		{"harbor no repository", config.WebhookHarbor, `{"type":"PUSH_ARTIFACT","event_data":{"resources":[]}}`, Notification{}, true},
		{"harbor no type", config.WebhookHarbor, `{"event_data":{}}`, Notification{}, true},
		{"harbor scan ignored", config.WebhookHarbor, `{"type":"SCANNING_COMPLETED","event_data":{}}`, Notification{Ignored: 1}, false},
		{"dockerhub official", config.WebhookDockerHub, `{"push_data":{"tag":"3.20","pushed_at":1.7e9},"repository":{"repo_name":"alpine"}}`,
			Notification{Events: []Event{{Action: ActionPush, Repository: "library/alpine", Tag: "3.20", Stamp: "1.7e9"}}}, false},
		{"dockerhub no tag", config.WebhookDockerHub, `{"push_data":{},"repository":{"repo_name":"a/b"}}`, Notification{Ignored: 1}, false},
		{"dockerhub no repo", config.WebhookDockerHub, `{"push_data":{"tag":"x"}}`, Notification{}, true},
		{"dockerhub pushed_at text", config.WebhookDockerHub, `{"push_data":{"tag":"x","pushed_at":"soon"},"repository":{"repo_name":"a/b"}}`, Notification{}, true},
		{"cloudevents wrong version", config.WebhookCloudEvents, `{"specversion":"0.3","id":"1","source":"/x","type":"harbor.artifact.pushed","data":{}}`, Notification{}, true},
		{"cloudevents other type", config.WebhookCloudEvents, `{"specversion":"1.0","id":"1","source":"/x","type":"com.example.build"}`, Notification{Ignored: 1}, false},
		{"cloudevents no data", config.WebhookCloudEvents, `{"specversion":"1.0","id":"1","source":"/x","type":"harbor.artifact.pushed"}`, Notification{}, true},
		{"cloudevents batch", config.WebhookCloudEvents, `[{"specversion":"1.0","id":"1","source":"/x","type":"harbor.artifact.pushed","data":{"resources":[{"tag":"v1"}],"repository":{"repo_full_name":"a/b"}}},
			{"specversion":"1.0","id":"2","source":"/x","type":"harbor.quota.exceed"}]`,
			Notification{Events: []Event{{Action: ActionPush, Repository: "a/b", Tag: "v1"}}, Ignored: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tt.format, []byte(tt.body))
			if tt.bad {
				if !errors.Is(err, ErrPayload) {
					t.Fatalf("err = %v, want ErrPayload", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// checkParsed is what every parser promises for any input: an error, or
// events that name valid images.
func checkParsed(t *testing.T, n Notification, err error) {
	if err != nil {
		if !errors.Is(err, ErrPayload) {
			t.Fatalf("error %v is not ErrPayload", err)
		}
		return
	}
	for _, e := range n.Events {
		if e.Action != ActionPush && e.Action != ActionDelete {
			t.Fatalf("action %q", e.Action)
		}
		if e.Tag == "" && e.Digest == "" {
			t.Fatalf("event without tag or digest: %+v", e)
		}
		if strings.ContainsAny(Image("hub", e), " \n\t") {
			t.Fatalf("image %q", Image("hub", e))
		}
	}
}

func fuzzFormat(f *testing.F, format string, files ...string) {
	for _, name := range files {
		f.Add(sample(f, name))
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse(format, data)
		checkParsed(t, n, err)
	})
}

func FuzzParseDistribution(f *testing.F) {
	fuzzFormat(f, config.WebhookDistribution, "distribution.json", "distribution_delete.json")
}

func FuzzParseHarbor(f *testing.F) {
	fuzzFormat(f, config.WebhookHarbor, "harbor_push.json", "harbor_delete.json", "harbor_pull.json")
}

func FuzzParseDockerHub(f *testing.F) {
	fuzzFormat(f, config.WebhookDockerHub, "dockerhub.json")
}

func FuzzParseCloudEvents(f *testing.F) {
	fuzzFormat(f, config.WebhookCloudEvents, "cloudevents_push.json", "cloudevents_deleted.json")
}
