package connector_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/store"
)

// TestLocalErrors classifies what a local connector answers from its store.
func TestLocalErrors(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := store.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	repo := store.Repo{Registry: "src", Name: "app"}
	if err := st.PutBlob(ctx, repo, blobDigest, int64(len(blobBody)), bytes.NewReader(blobBody)); err != nil {
		t.Fatal(err)
	}
	m := store.Manifest{MediaType: ociManifest, Digest: manifestDigest, Data: manifestBody}
	if err := st.PutManifest(ctx, repo, m, store.PutManifestOptions{Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	l := connector.NewLocal("release", "src", connector.Filter{Exclude: []string{"secret/**"}}, st)

	for _, tt := range []struct {
		name string
		call func() error
		want outcome
	}{
		{"manifest by tag", func() error {
			got, err := l.GetManifest(ctx, "app", "v1")
			if err == nil && got.Digest != manifestDigest {
				return errors.New("wrong manifest")
			}
			return err
		}, outcome{ok: true}},
		{"blob HEAD", func() error { _, err := l.HeadBlob(ctx, "app", blobDigest); return err }, outcome{ok: true}},
		{"unknown tag", func() error { _, err := l.GetManifest(ctx, "app", "v9"); return err },
			outcome{kind: fault.NotFound, notFound: true, status: 404}},
		{"unknown repository", func() error { _, err := l.Tags(ctx, "nope"); return err },
			outcome{kind: fault.NotFound, notFound: true, status: 404}},
		{"unknown blob", func() error { _, _, err := l.GetBlob(ctx, "app", digest.FromString("absent")); return err },
			outcome{kind: fault.NotFound, notFound: true, status: 404}},
		{"excluded repository", func() error {
			_, err := l.GetManifest(ctx, "secret/app", "v1")
			if err != nil && !errors.Is(err, store.ErrNameUnknown) {
				return errors.New("excluded is not NAME_UNKNOWN: " + err.Error())
			}
			return err
		}, outcome{kind: fault.NotFound, notFound: true}},
	} {
		check(t, tt.name, tt.call(), tt.want)
	}

	// Stored content that fails its digest is the store's fault: a
	// temporary failure of this hop, never "not found".
	p := filepath.Join(root, "blobs", "sha256", manifestDigest.Encoded()[:2], manifestDigest.Encoded())
	_ = os.Chmod(p, 0o644)
	if err := os.WriteFile(p, bytes.ToUpper(manifestBody), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = l.GetManifest(ctx, "app", "v1")
	check(t, "corrupt stored manifest", err, outcome{kind: fault.Unavailable, temp: true})
	if err != nil && !strings.Contains(err.Error(), "release") {
		t.Errorf("the error does not name the connector: %v", err)
	}
}
