// Package manifest parses and validates image manifests and indexes (OCI and
// Docker schema 2) and lists the content they reference.
package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/ref"
)

// Media types regwarm understands.
const (
	OCIManifest      = ocispec.MediaTypeImageManifest
	OCIIndex         = ocispec.MediaTypeImageIndex
	DockerManifest   = "application/vnd.docker.distribution.manifest.v2+json"
	DockerList       = "application/vnd.docker.distribution.manifest.list.v2+json"
	DockerSchema1    = "application/vnd.docker.distribution.manifest.v1+json"
	DockerSchema1Sig = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	OCIEmptyJSON     = ocispec.MediaTypeEmptyJSON
)

// MaxSize is the largest manifest accepted, as in the distribution spec.
const MaxSize = 4 << 20

// MaxReferences is the most references (index entries, or config and
// layers) a manifest may list; a bigger one is refused whatever the
// connector (connectors[].max_manifest_entries bounds the upstream work
// below it).
const MaxReferences = 10000

// Known lists the manifest media types that can be stored, most preferred
// first; it is also the Accept header sent upstream.
var Known = []string{OCIIndex, OCIManifest, DockerList, DockerManifest}

// ErrInvalid is returned for a manifest that cannot be accepted.
var ErrInvalid = fault.New(fault.Invalid, "invalid manifest")

// ErrTooManyReferences is returned (wrapping ErrInvalid) for a manifest that
// lists more than MaxReferences references.
var ErrTooManyReferences = fmt.Errorf("%w: too many references", ErrInvalid)

// Manifest is a parsed manifest or index.
type Manifest struct {
	MediaType    string
	ArtifactType string
	Config       *ocispec.Descriptor
	Layers       []ocispec.Descriptor
	Manifests    []ocispec.Descriptor
	Subject      *ocispec.Descriptor
	Annotations  map[string]string
}

type raw struct {
	SchemaVersion *int                 `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	ArtifactType  string               `json:"artifactType"`
	Config        *ocispec.Descriptor  `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Manifests     []ocispec.Descriptor `json:"manifests"`
	Subject       *ocispec.Descriptor  `json:"subject"`
	Annotations   map[string]string    `json:"annotations"`
}

// IsIndex reports whether mediaType is an index or manifest list.
func IsIndex(mediaType string) bool { return mediaType == OCIIndex || mediaType == DockerList }

// IsKnown reports whether mediaType is a manifest type regwarm stores.
func IsKnown(mediaType string) bool {
	for _, k := range Known {
		if k == mediaType {
			return true
		}
	}
	return false
}

// Parse validates data as a manifest. contentType is the Content-Type it
// arrived with ("" if none); the media type is taken from it when it is a
// known manifest type, else from the body's mediaType, else guessed.
func Parse(contentType string, data []byte) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, MaxSize)
	}
	var r raw
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after JSON", ErrInvalid)
	}
	ct := contentType
	if ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err == nil {
			ct = mt
		}
	}
	mt := ct
	if !IsKnown(mt) {
		mt = r.MediaType
	}
	if mt == "" {
		switch {
		case r.Manifests != nil:
			mt = OCIIndex
		case r.Config != nil:
			mt = OCIManifest
		}
	}
	if mt == DockerSchema1 || mt == DockerSchema1Sig {
		return nil, fmt.Errorf("%w: docker schema 1 manifests are not supported", ErrInvalid)
	}
	if !IsKnown(mt) {
		return nil, fmt.Errorf("%w: unsupported media type %q", ErrInvalid, mt)
	}
	if r.MediaType != "" && r.MediaType != mt {
		return nil, fmt.Errorf("%w: mediaType %q does not match %q", ErrInvalid, r.MediaType, mt)
	}
	if r.SchemaVersion == nil || *r.SchemaVersion != 2 {
		return nil, fmt.Errorf("%w: schemaVersion must be 2", ErrInvalid)
	}
	if n := len(r.Manifests) + len(r.Layers); n > MaxReferences {
		return nil, fmt.Errorf("%w: %d, at most %d", ErrTooManyReferences, n, MaxReferences)
	}
	m := &Manifest{MediaType: mt, ArtifactType: r.ArtifactType, Subject: r.Subject, Annotations: r.Annotations}
	if IsIndex(mt) {
		if r.Config != nil || r.Layers != nil {
			return nil, fmt.Errorf("%w: an index has no config or layers", ErrInvalid)
		}
		m.Manifests = r.Manifests
		if m.Manifests == nil && mt == DockerList {
			return nil, fmt.Errorf("%w: manifests is required", ErrInvalid)
		}
	} else {
		if r.Config == nil {
			return nil, fmt.Errorf("%w: config is required", ErrInvalid)
		}
		if r.Manifests != nil {
			return nil, fmt.Errorf("%w: an image manifest has no manifests list", ErrInvalid)
		}
		m.Config = r.Config
		m.Layers = r.Layers
	}
	for _, d := range m.References() {
		if err := checkDescriptor(d); err != nil {
			return nil, err
		}
	}
	if m.Subject != nil {
		if err := checkDescriptor(*m.Subject); err != nil {
			return nil, fmt.Errorf("subject: %w", err)
		}
	}
	return m, nil
}

func checkDescriptor(d ocispec.Descriptor) error {
	if _, err := ref.ParseDigest(string(d.Digest)); err != nil {
		return fmt.Errorf("%w: descriptor digest: %v", ErrInvalid, err)
	}
	if d.Size < 0 {
		return fmt.Errorf("%w: descriptor %s has negative size", ErrInvalid, d.Digest)
	}
	if d.MediaType == "" {
		return fmt.Errorf("%w: descriptor %s has no mediaType", ErrInvalid, d.Digest)
	}
	return nil
}

// References lists the descriptors m depends on: child manifests of an
// index, or the config and layers of an image. The subject is not included.
func (m *Manifest) References() []ocispec.Descriptor {
	if IsIndex(m.MediaType) {
		return m.Manifests
	}
	out := make([]ocispec.Descriptor, 0, len(m.Layers)+1)
	if m.Config != nil {
		out = append(out, *m.Config)
	}
	return append(out, m.Layers...)
}

// Required lists what m needs in the registry: the child manifests of an
// index, or the config and layers of an image without the
// non-distributable ones.
func (m *Manifest) Required() []ocispec.Descriptor {
	refs := m.References()
	if IsIndex(m.MediaType) {
		return refs
	}
	out := refs[:0]
	for _, d := range refs {
		if !NonDistributable(d) {
			out = append(out, d)
		}
	}
	return out
}

// NonDistributable reports whether a layer descriptor need not be present in
// the registry (foreign or non-distributable layers).
func NonDistributable(d ocispec.Descriptor) bool {
	switch d.MediaType {
	case "application/vnd.oci.image.layer.nondistributable.v1.tar",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return true
	}
	return false
}

// EffectiveArtifactType is the artifactType a referrers list reports for m:
// its artifactType, else its config media type.
func (m *Manifest) EffectiveArtifactType() string {
	if m.ArtifactType != "" {
		return m.ArtifactType
	}
	if m.Config != nil {
		return m.Config.MediaType
	}
	return ""
}

// Digest computes the canonical digest of data with alg.
func Digest(alg digest.Algorithm, data []byte) digest.Digest { return alg.FromBytes(data) }
