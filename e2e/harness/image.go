package harness

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// OCI media types used by the generated images.
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// ImageOptions shape the image BuildImage writes. The zero value gives a
// two-platform image with two 256 KiB layers per platform plus a shared one.
type ImageOptions struct {
	// Platforms are os/arch[/variant]; default linux/amd64 and linux/arm64.
	Platforms []string
	// Layers is the number of platform-specific layers; default 2. Every
	// platform also gets one layer that all platforms share.
	Layers int
	// LayerSize is the random payload per layer in bytes; default 256 KiB.
	LayerSize int64
	// Seed makes different images; the same options give the same bytes.
	Seed int64
	// Tag is the layout's ref name for the index; default "v1".
	Tag string
	// ArtifactType also writes "artifactType" into the index descriptors,
	// as go-containerregistry does. skopeo 1.9 drops that field (and so
	// changes the index digest, or refuses --preserve-digests), so it is off
	// by default; it is a good check that a cache keeps manifest bytes.
	ArtifactType bool
}

// Image describes an OCI image layout written by BuildImage.
type Image struct {
	// Dir is the OCI layout directory; Tag its ref name for the index.
	Dir, Tag string
	// IndexDigest and IndexSize describe the image index.
	IndexDigest string
	IndexSize   int64
	// SharedLayer is the layer every platform has.
	SharedLayer string
	// Manifests has one entry per platform, in ImageOptions order.
	Manifests []PlatformImage
}

// PlatformImage is one platform's manifest in an Image.
type PlatformImage struct {
	Platform string   // os/arch[/variant]
	Digest   string   // manifest digest
	Size     int64    // manifest size
	Config   string   // config blob digest
	Layers   []string // layer blob digests, the shared one first
	DiffIDs  []string // digests of the uncompressed layers
}

// Platform returns the manifest for platform p; it panics on an unknown one.
func (im *Image) Platform(p string) PlatformImage {
	for _, m := range im.Manifests {
		if m.Platform == p {
			return m
		}
	}
	panic("harness: image has no platform " + p)
}

// Blobs returns platform p's manifest, config and layer digests.
func (im *Image) Blobs(p string) []string {
	m := im.Platform(p)
	return append([]string{m.Digest, m.Config}, m.Layers...)
}

// AllBlobs returns every digest in the layout's blobs directory (index,
// manifests, configs, layers), sorted and without duplicates.
func (im *Image) AllBlobs() []string {
	all := []string{im.IndexDigest}
	for _, m := range im.Manifests {
		all = append(all, im.Blobs(m.Platform)...)
	}
	sort.Strings(all)
	return slices.Compact(all)
}

// ReadBlob returns the bytes of a blob in the layout.
func (im *Image) ReadBlob(t testing.TB, digest string) []byte {
	t.Helper()
	b, err := os.ReadFile(BlobPath(im.Dir, digest))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// OCI returns the skopeo/podman transport reference "oci:DIR:TAG".
func (im *Image) OCI() string { return "oci:" + im.Dir + ":" + im.Tag }

// BlobPath returns the path of a blob in an OCI layout.
func BlobPath(dir, digest string) string {
	alg, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(dir, "blobs", alg, hex)
}

// Digest returns the sha256 digest of b.
func Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// DigestOf reads r to its end and returns the sha256 digest of what it
// read and how many bytes that was; on a read error, of what came before.
func DigestOf(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, err
}

// RandomBytes returns n incompressible pseudo-random bytes. The same seed
// gives the same bytes; only the seed's low 16 bits count.
func RandomBytes(seed uint64, n int) []byte {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	Platform     *platform         `json:"platform,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type imageConfig struct {
	Created      string           `json:"created"`
	Architecture string           `json:"architecture"`
	OS           string           `json:"os"`
	Variant      string           `json:"variant,omitempty"`
	Config       map[string]any   `json:"config"`
	RootFS       map[string]any   `json:"rootfs"`
	History      []map[string]any `json:"history"`
}

// layoutWriter writes blobs into an OCI layout.
type layoutWriter struct{ dir string }

func (w layoutWriter) put(b []byte) (string, error) {
	d := Digest(b)
	path := BlobPath(w.dir, d)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	return d, os.WriteFile(path, b, 0o644)
}

// BuildImage writes a deterministic multi-platform OCI image layout into
// dir: an index with one manifest per platform, each with a shared layer
// and opts.Layers own gzip tar layers of seeded pseudo-random data.
func BuildImage(t testing.TB, dir string, opts ImageOptions) *Image {
	t.Helper()
	im, err := buildImage(dir, opts)
	if err != nil {
		t.Fatalf("BuildImage: %v", err)
	}
	return im
}

func buildImage(dir string, opts ImageOptions) (*Image, error) {
	if len(opts.Platforms) == 0 {
		opts.Platforms = []string{"linux/amd64", "linux/arm64"}
	}
	if opts.Layers == 0 {
		opts.Layers = 2
	}
	if opts.LayerSize == 0 {
		opts.LayerSize = 256 << 10
	}
	if opts.Tag == "" {
		opts.Tag = "v1"
	}
	shared, err := randomLayer(opts.Seed, 0, "shared/common.bin", opts.LayerSize)
	if err != nil {
		return nil, err
	}
	var specs []platformSpec
	for pi, p := range opts.Platforms {
		spec := platformSpec{name: p, layers: []layer{shared}, labels: map[string]string{"org.regwarm.e2e.seed": fmt.Sprint(opts.Seed)}}
		for i := range opts.Layers {
			name := fmt.Sprintf("data/%s-%d.bin", strings.ReplaceAll(p, "/", "-"), i)
			l, err := randomLayer(opts.Seed, uint64(1000*(pi+1)+i), name, opts.LayerSize)
			if err != nil {
				return nil, err
			}
			spec.layers = append(spec.layers, l)
		}
		specs = append(specs, spec)
	}
	im, err := writeLayout(dir, opts.Tag, specs, opts.ArtifactType)
	if err != nil {
		return nil, err
	}
	im.SharedLayer = shared.digest()
	return im, nil
}

// platformSpec is what writeLayout needs to write one platform's image.
type platformSpec struct {
	name   string // os/arch[/variant]
	layers []layer
	cmd    []string
	labels map[string]string
}

// writeLayout writes an OCI layout holding one index, tagged tag, with a
// manifest per spec.
func writeLayout(dir, tag string, specs []platformSpec, artifactType bool) (*Image, error) {
	w := layoutWriter{dir}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return nil, err
	}
	im := &Image{Dir: dir, Tag: tag}
	idx := index{SchemaVersion: 2, MediaType: MediaTypeIndex}
	for _, spec := range specs {
		pm, plat, err := w.putImage(spec)
		if err != nil {
			return nil, err
		}
		desc := descriptor{MediaType: MediaTypeManifest, Digest: pm.Digest, Size: pm.Size, Platform: &plat}
		if artifactType {
			desc.ArtifactType = MediaTypeConfig
		}
		idx.Manifests = append(idx.Manifests, desc)
		im.Manifests = append(im.Manifests, pm)
	}
	ib, err := json.Marshal(idx)
	if err != nil {
		return nil, err
	}
	if im.IndexDigest, err = w.put(ib); err != nil {
		return nil, err
	}
	im.IndexSize = int64(len(ib))
	top, err := json.Marshal(index{SchemaVersion: 2, MediaType: MediaTypeIndex, Manifests: []descriptor{{
		MediaType: MediaTypeIndex, Digest: im.IndexDigest, Size: im.IndexSize,
		Annotations: map[string]string{"org.opencontainers.image.ref.name": tag},
	}}})
	if err != nil {
		return nil, err
	}
	return im, os.WriteFile(filepath.Join(dir, "index.json"), top, 0o644)
}

// putImage writes the layers, config and manifest of one platform.
func (w layoutWriter) putImage(spec platformSpec) (PlatformImage, platform, error) {
	parts := strings.Split(spec.name, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return PlatformImage{}, platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", spec.name)
	}
	plat := platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		plat.Variant = parts[2]
	}
	pm := PlatformImage{Platform: spec.name}
	var descs []descriptor
	var history []map[string]any
	for _, l := range spec.layers {
		d, err := w.put(l.gz)
		if err != nil {
			return pm, plat, err
		}
		descs = append(descs, descriptor{MediaType: MediaTypeLayer, Digest: d, Size: int64(len(l.gz))})
		pm.Layers = append(pm.Layers, d)
		pm.DiffIDs = append(pm.DiffIDs, l.diffID)
		history = append(history, map[string]any{"created": created, "created_by": "regwarm e2e: " + l.name})
	}
	runConfig := map[string]any{
		"Env":    []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		"Labels": spec.labels,
	}
	if spec.cmd != nil {
		runConfig["Cmd"] = spec.cmd
	}
	cfg, err := json.Marshal(imageConfig{
		Created: created, OS: plat.OS, Architecture: plat.Architecture, Variant: plat.Variant,
		Config:  runConfig,
		RootFS:  map[string]any{"type": "layers", "diff_ids": pm.DiffIDs},
		History: history,
	})
	if err != nil {
		return pm, plat, err
	}
	if pm.Config, err = w.put(cfg); err != nil {
		return pm, plat, err
	}
	mb, err := json.Marshal(manifest{
		SchemaVersion: 2, MediaType: MediaTypeManifest,
		Config: descriptor{MediaType: MediaTypeConfig, Digest: pm.Config, Size: int64(len(cfg))},
		Layers: descs,
	})
	if err != nil {
		return pm, plat, err
	}
	if pm.Digest, err = w.put(mb); err != nil {
		return pm, plat, err
	}
	pm.Size = int64(len(mb))
	return pm, plat, nil
}

// created is the fixed creation time of every generated image.
const created = "2024-01-01T00:00:00Z"

// layer is a generated gzip tar layer.
type layer struct {
	name   string
	gz     []byte
	diffID string
}

// digest returns the layer's (compressed) blob digest.
func (l layer) digest() string { return Digest(l.gz) }

// randomLayer returns a layer holding one file of size pseudo-random bytes
// from (seed, stream).
func randomLayer(seed int64, stream uint64, name string, size int64) (layer, error) {
	rng := rand.New(rand.NewPCG(uint64(seed), stream))
	data := make([]byte, size+7)
	for i := 0; i < len(data)-7; i += 8 {
		binary.LittleEndian.PutUint64(data[i:], rng.Uint64())
	}
	return tarLayer(name, 0o644, data[:size])
}

// tarLayer returns a gzip tar layer holding one file (and its directory).
// The gzip stream uses stored blocks: random data does not compress, and
// stored blocks keep digests independent of the Go version's deflate.
func tarLayer(name string, mode int64, data []byte) (layer, error) {
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	if dir := filepath.Dir(name); dir != "." {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
			return layer{}, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
		return layer{}, err
	}
	if _, err := tw.Write(data); err != nil {
		return layer{}, err
	}
	if err := tw.Close(); err != nil {
		return layer{}, err
	}
	var gzBuf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gzBuf, gzip.NoCompression)
	if err != nil {
		return layer{}, err
	}
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		return layer{}, err
	}
	if err := zw.Close(); err != nil {
		return layer{}, err
	}
	return layer{name: name, gz: gzBuf.Bytes(), diffID: Digest(tarBuf.Bytes())}, nil
}

// LayoutTags returns the ref names of an OCI layout's index.json and the
// digests they point at.
func LayoutTags(t testing.TB, dir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx index
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatalf("%s/index.json: %v", dir, err)
	}
	tags := map[string]string{}
	for _, d := range idx.Manifests {
		tags[d.Annotations["org.opencontainers.image.ref.name"]] = d.Digest
	}
	return tags
}

// LayoutBlobs returns every sha256 blob in an OCI layout, sorted, and
// fails the test when a blob's bytes do not hash to its name.
func LayoutBlobs(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		d := "sha256:" + e.Name()
		b, err := os.ReadFile(BlobPath(dir, d))
		if err != nil {
			t.Fatal(err)
		}
		if got := Digest(b); got != d {
			t.Errorf("%s: blob %s has digest %s", dir, d, got)
		}
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// AssertSameLayout fails the test unless the OCI layout in dir tags
// want.Tag with want.IndexDigest and holds exactly want's blobs, byte for byte.
func AssertSameLayout(t testing.TB, want *Image, dir string) {
	t.Helper()
	if got := LayoutTags(t, dir)[want.Tag]; got != want.IndexDigest {
		t.Errorf("%s: tag %s -> %s, want the index %s", dir, want.Tag, got, want.IndexDigest)
	}
	// LayoutBlobs checks every blob's bytes against its digest, so equal
	// digest sets mean equal bytes.
	got, wantBlobs := LayoutBlobs(t, dir), want.AllBlobs()
	if !slices.Equal(got, wantBlobs) {
		t.Errorf("%s: blobs differ\n got: %v\nwant: %v", dir, got, wantBlobs)
	}
}
