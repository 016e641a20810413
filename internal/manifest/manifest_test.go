package manifest

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestRequired(t *testing.T) {
	cfg := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: "sha256:c"}
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: "sha256:l"}
	foreign := ocispec.Descriptor{MediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Digest: "sha256:f"}
	img := &Manifest{MediaType: OCIManifest, Config: &cfg, Layers: []ocispec.Descriptor{layer, foreign}}
	got := img.Required()
	if len(got) != 2 || got[0].Digest != cfg.Digest || got[1].Digest != layer.Digest {
		t.Fatalf("image: %v, want config and the distributable layer", got)
	}
	if len(img.Layers) != 2 || len(img.References()) != 3 {
		t.Fatal("Required changed the manifest")
	}
	child := ocispec.Descriptor{MediaType: OCIManifest, Digest: "sha256:m"}
	idx := &Manifest{MediaType: OCIIndex, Manifests: []ocispec.Descriptor{child}}
	if got := idx.Required(); len(got) != 1 || got[0].Digest != child.Digest {
		t.Fatalf("index: %v", got)
	}
}
