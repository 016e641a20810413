package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// content is one blob or manifest of a generated image, kept in a file.
type content struct {
	desc ocispec.Descriptor
	path string
}

// image is a generated single-platform image: an OCI index (tagged) with
// one linux/amd64 manifest, its config and its layers.
type image struct {
	repo, tag string
	index     content
	manifest  content
	config    content
	layers    []content
}

// blobs are the blobs a pull fetches: config and layers.
func (im *image) blobs() []content { return append([]content{im.config}, im.layers...) }

// pullBytes is what a single-platform pull downloads: index, manifest,
// config and layers.
func (im *image) pullBytes() int64 {
	n := im.index.desc.Size + im.manifest.desc.Size
	for _, b := range im.blobs() {
		n += b.desc.Size
	}
	return n
}

// ref returns host/repo:tag.
func (im *image) ref(host string) string { return host + "/" + im.repo + ":" + im.tag }

// buildImage writes a deterministic image with one layer per entry of
// layerSizes (random payload of that many bytes, in a tar, gzip without
// compression so the wire size is the payload size) into dir.
func buildImage(dir, repo string, seed uint64, layerSizes []int64) (*image, error) {
	return buildPlatformImage(dir, repo, seed, ocispec.Platform{OS: "linux", Architecture: "amd64"}, layerSizes)
}

// buildPlatformImage is buildImage for another platform.
func buildPlatformImage(dir, repo string, seed uint64, plat ocispec.Platform, layerSizes []int64) (*image, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	im := &image{repo: repo, tag: "v1"}
	var diffIDs []digest.Digest
	for i, size := range layerSizes {
		layer, diffID, err := writeLayer(filepath.Join(dir, fmt.Sprintf("layer%d.tar.gz", i)), seed*1000+uint64(i), size)
		if err != nil {
			return nil, err
		}
		im.layers = append(im.layers, layer)
		diffIDs = append(diffIDs, diffID)
	}
	cfg := ocispec.Image{
		Platform: plat,
		Config:   ocispec.ImageConfig{Cmd: []string{"/data"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	var err error
	if im.config, err = writeJSON(dir, "config.json", ocispec.MediaTypeImageConfig, cfg); err != nil {
		return nil, err
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: im.config.desc}
	m.SchemaVersion = 2
	for _, l := range im.layers {
		m.Layers = append(m.Layers, l.desc)
	}
	if im.manifest, err = writeJSON(dir, "manifest.json", ocispec.MediaTypeImageManifest, m); err != nil {
		return nil, err
	}
	md := im.manifest.desc
	md.Platform = &plat
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{md}}
	idx.SchemaVersion = 2
	if im.index, err = writeJSON(dir, "index.json", ocispec.MediaTypeImageIndex, idx); err != nil {
		return nil, err
	}
	return im, nil
}

func writeJSON(dir, name, mediaType string, v any) (content, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return content{}, err
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return content{}, err
	}
	return content{desc: ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}, path: path}, nil
}

// writeLayer writes a tar+gzip layer holding one file of size random bytes
// and returns it with its diff id (the digest of the tar).
func writeLayer(path string, seed uint64, size int64) (content, digest.Digest, error) {
	f, err := os.Create(path)
	if err != nil {
		return content{}, "", err
	}
	defer f.Close()
	blobHash, diffHash := digest.Canonical.Hash(), digest.Canonical.Hash()
	counter := &countWriter{}
	bw := bufio.NewWriterSize(io.MultiWriter(f, blobHash, counter), 1<<20)
	gz, err := gzip.NewWriterLevel(bw, gzip.NoCompression)
	if err != nil {
		return content{}, "", err
	}
	tw := tar.NewWriter(io.MultiWriter(gz, diffHash))
	hdr := &tar.Header{Name: "data", Mode: 0o644, Size: size, ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return content{}, "", err
	}
	if err := writeRandom(tw, seed, size); err != nil {
		return content{}, "", err
	}
	for _, c := range []io.Closer{tw, gz} {
		if err := c.Close(); err != nil {
			return content{}, "", err
		}
	}
	if err := bw.Flush(); err != nil {
		return content{}, "", err
	}
	if err := f.Close(); err != nil {
		return content{}, "", err
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: sum(blobHash), Size: counter.n}
	return content{desc: desc, path: path}, sum(diffHash), nil
}

func sum(h hash.Hash) digest.Digest { return digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)) }

// writeRandom writes size deterministic pseudo-random bytes seeded by seed.
func writeRandom(w io.Writer, seed uint64, size int64) error {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rng := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := min(size, int64(len(buf)))
		_, _ = rng.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// push uploads the image to the registry at addr: blobs (monolithic POST
// then PUT), the manifest by digest and the index by tag.
func (im *image) push(ctx context.Context, addr string) error {
	client := &http.Client{Timeout: 5 * time.Minute}
	base := "http://" + addr + "/v2/" + im.repo
	if err := im.pushManifest(ctx, client, base); err != nil {
		return err
	}
	return pushManifest(ctx, client, base, im.index, im.tag)
}

// pushManifest uploads the blobs and then the manifest (by digest), not
// the index.
func (im *image) pushManifest(ctx context.Context, client *http.Client, base string) error {
	for _, b := range im.blobs() {
		if err := pushBlob(ctx, client, base, b); err != nil {
			return err
		}
	}
	return pushManifest(ctx, client, base, im.manifest, im.manifest.desc.Digest.String())
}

func pushBlob(ctx context.Context, client *http.Client, base string, b content) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/blobs/uploads/", nil)
	if err != nil {
		return err
	}
	res, err := do(client, req, http.StatusAccepted)
	if err != nil {
		return fmt.Errorf("push %s: %w", b.desc.Digest, err)
	}
	loc, err := url.Parse(base)
	if err == nil {
		loc, err = loc.Parse(res.Header.Get("Location"))
	}
	if err != nil {
		return fmt.Errorf("push %s: upload location: %w", b.desc.Digest, err)
	}
	q := loc.Query()
	q.Set("digest", b.desc.Digest.String())
	loc.RawQuery = q.Encode()
	f, err := os.Open(b.path)
	if err != nil {
		return err
	}
	defer f.Close()
	req, err = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), f)
	if err != nil {
		return err
	}
	req.ContentLength = b.desc.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	if _, err := do(client, req, http.StatusCreated); err != nil {
		return fmt.Errorf("push %s: %w", b.desc.Digest, err)
	}
	return nil
}

func pushManifest(ctx context.Context, client *http.Client, base string, m content, reference string) error {
	body, err := os.ReadFile(m.path)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, base+"/manifests/"+reference, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", m.desc.MediaType)
	if _, err := do(client, req, http.StatusCreated); err != nil {
		return fmt.Errorf("push manifest %s: %w", reference, err)
	}
	return nil
}

// do sends req and checks the status; the body is drained and closed.
func do(client *http.Client, req *http.Request, want int) (*http.Response, error) {
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
	_ = res.Body.Close()
	if res.StatusCode != want {
		return nil, fmt.Errorf("%s %s: status %d, want %d: %s", req.Method, req.URL.Path, res.StatusCode, want, bytes.TrimSpace(body))
	}
	return res, nil
}

// mib formats a byte count in MiB.
func mib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB" }
