package manifest

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/regwarm/regwarm/internal/ref"
)

// manifestIndex is an index (OCI) with n child entries.
func manifestIndex(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"schemaVersion":2,"mediaType":"` + OCIIndex + `","manifests":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"mediaType":%q,"digest":"sha256:%064x","size":%d}`, OCIManifest, i, i)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

func TestParseTooManyReferences(t *testing.T) {
	t.Parallel()
	if _, err := Parse("", manifestIndex(MaxReferences)); err != nil {
		t.Fatalf("an index of %d entries: %v", MaxReferences, err)
	}
	_, err := Parse("", manifestIndex(MaxReferences+1))
	if !errors.Is(err, ErrTooManyReferences) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("an index of %d entries: %v, want ErrTooManyReferences (an ErrInvalid)", MaxReferences+1, err)
	}
	if !strings.Contains(err.Error(), "10001") {
		t.Errorf("error %q does not say how many", err)
	}
}

func FuzzParse(f *testing.F) {
	img := `{"schemaVersion":2,"mediaType":"` + OCIManifest + `","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` +
		strings.Repeat("a", 64) + `","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` +
		strings.Repeat("b", 64) + `","size":3}],"subject":{"mediaType":"` + OCIManifest + `","digest":"sha256:` + strings.Repeat("c", 64) + `","size":4}}`
	f.Add("", []byte(img))
	f.Add(OCIIndex, manifestIndex(3))
	f.Add(DockerList, []byte(`{"schemaVersion":2,"mediaType":"`+DockerList+`","manifests":[]}`))
	f.Add(DockerManifest+"; charset=utf-8", []byte(`{"schemaVersion":2,"config":{}}`))
	f.Add("", []byte(`{"schemaVersion":1}`))
	f.Add("", []byte(`{} {}`))
	f.Fuzz(func(t *testing.T, contentType string, data []byte) {
		m, err := Parse(contentType, data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse error %v is not ErrInvalid", err)
			}
			return
		}
		if !IsKnown(m.MediaType) {
			t.Fatalf("accepted unknown media type %q", m.MediaType)
		}
		refs := m.References()
		if len(refs) > MaxReferences+1 || len(m.Required()) > len(refs) {
			t.Fatalf("%d references, %d required", len(refs), len(m.Required()))
		}
		for _, d := range refs {
			if _, err := ref.ParseDigest(d.Digest.String()); err != nil || d.Size < 0 {
				t.Fatalf("accepted descriptor %+v: %v", d, err)
			}
		}
		// The media type found is stable: parsing again with it as the
		// content type gives the same manifest.
		again, err := Parse(m.MediaType, data)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("parse again as %q: %+v, %v; first %+v", m.MediaType, again, err, m)
		}
	})
}
