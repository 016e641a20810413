package harness

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestStandinPath(t *testing.T) {
	t.Parallel()
	names := map[string]bool{"local": true, "other": true}
	for _, tc := range []struct{ in, def, want string }{
		{"/v2/", "local", "/v2/"},
		{"/v2/_catalog", "local", "/v2/_catalog"},
		{"/v2/local/e2e/multi/manifests/v1", "local", "/v2/local/e2e/multi/manifests/v1"},
		{"/v2/other/x/blobs/uploads/", "local", "/v2/other/x/blobs/uploads/"},
		{"/v2/e2e/multi/manifests/v1", "local", "/v2/local/e2e/multi/manifests/v1"},
		{"/v2/e2e/multi/manifests/v1", "", "/v2/e2e/multi/manifests/v1"},
		{"/healthz", "local", "/healthz"},
	} {
		if got := standinPath(tc.in, names, tc.def); got != tc.want {
			t.Errorf("standinPath(%q, default %q) = %q, want %q", tc.in, tc.def, got, tc.want)
		}
	}
}

func TestParseAccessLog(t *testing.T) {
	t.Parallel()
	log := `time="2026-11-27T03:31:37Z" level=info msg="response completed" http.request.method=GET http.request.uri=/v2/ http.response.status=200
127.0.0.1 - - [27/Nov/2026:03:31:37 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
127.0.0.1 - - [27/Nov/2026:03:31:37 +0000] "GET /v2/foo/blobs/sha256:aa?ns=docker.io HTTP/1.1" 404 157 "" "curl/7.88.1"
127.0.0.1 - - [27/Nov/2026:03:31:37 +0000] "HEAD /v2/_catalog HTTP/1.1" 405 19 "" "curl/7.88.1"
`
	got, err := parseAccessLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	want := []Request{
		{Method: "GET", Path: "/v2/", Status: 200, Agent: "curl/7.88.1"},
		{Method: "GET", Path: "/v2/foo/blobs/sha256:aa", Query: "ns=docker.io", Status: 404, Agent: "curl/7.88.1"},
		{Method: "HEAD", Path: "/v2/_catalog", Status: 405, Agent: "curl/7.88.1"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseAccessLog:\n got %+v\nwant %+v", got, want)
	}
}

func TestBuildImageDeterministic(t *testing.T) {
	t.Parallel()
	opts := ImageOptions{Layers: 1, LayerSize: 1000, Seed: 7}
	a := BuildImage(t, t.TempDir(), opts)
	b := BuildImage(t, t.TempDir(), opts)
	if a.IndexDigest != b.IndexDigest {
		t.Errorf("same options, different index: %s vs %s", a.IndexDigest, b.IndexDigest)
	}
	opts.Seed = 8
	c := BuildImage(t, t.TempDir(), opts)
	if c.IndexDigest == a.IndexDigest {
		t.Error("different seeds gave the same index")
	}
	opts.ArtifactType = true
	opts.Seed = 7
	d := BuildImage(t, t.TempDir(), opts)
	if d.IndexDigest == a.IndexDigest || d.Manifests[0].Digest != a.Manifests[0].Digest {
		t.Error("ArtifactType should change only the index")
	}
}

func TestBuildImageContent(t *testing.T) {
	t.Parallel()
	im := BuildImage(t, t.TempDir(), ImageOptions{Layers: 2, LayerSize: 4097, Seed: 3})
	if n := len(im.AllBlobs()); n != 1+2*(1+1+3)-1 {
		t.Errorf("AllBlobs: %d blobs, want 10 (index, 2 manifests, 2 configs, 1 shared + 4 layers)", n)
	}
	if got := LayoutTags(t, im.Dir)["v1"]; got != im.IndexDigest {
		t.Errorf("index.json tag v1 -> %s, want %s", got, im.IndexDigest)
	}
	if !slices.Equal(LayoutBlobs(t, im.Dir), im.AllBlobs()) {
		t.Error("layout blobs differ from AllBlobs")
	}
	for _, m := range im.Manifests {
		if m.Layers[0] != im.SharedLayer {
			t.Errorf("%s: first layer %s, want the shared %s", m.Platform, m.Layers[0], im.SharedLayer)
		}
		var cfg struct {
			Arch   string `json:"architecture"`
			RootFS struct {
				DiffIDs []string `json:"diff_ids"`
			} `json:"rootfs"`
		}
		if err := json.Unmarshal(im.ReadBlob(t, m.Config), &cfg); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(m.Platform, "/"+cfg.Arch) || !slices.Equal(cfg.RootFS.DiffIDs, m.DiffIDs) {
			t.Errorf("%s: config arch %s diff_ids %v", m.Platform, cfg.Arch, cfg.RootFS.DiffIDs)
		}
		for i, l := range m.Layers {
			f, err := os.Open(BlobPath(im.Dir, l))
			if err != nil {
				t.Fatal(err)
			}
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := io.ReadAll(zr)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if Digest(raw) != m.DiffIDs[i] {
				t.Errorf("%s layer %d: diff id mismatch", m.Platform, i)
			}
			tr := tar.NewReader(strings.NewReader(string(raw)))
			var files []string
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if h.Typeflag == tar.TypeReg && h.Size != 4097 {
					t.Errorf("%s: %s has %d bytes", l, h.Name, h.Size)
				}
				files = append(files, filepath.Clean(h.Name))
			}
			if len(files) != 2 {
				t.Errorf("%s: tar entries %v", l, files)
			}
		}
	}
}

func TestRandomBytesAndDigestOf(t *testing.T) {
	t.Parallel()
	b := RandomBytes(5, 1000)
	if len(b) != 1000 || !bytes.Equal(b, RandomBytes(5, 1000)) || bytes.Equal(b, RandomBytes(6, 1000)) {
		t.Error("RandomBytes: want 1000 bytes, the same for seed 5 twice and different for seed 6")
	}
	d, n, err := DigestOf(bytes.NewReader(b))
	if err != nil || d != Digest(b) || n != 1000 {
		t.Errorf("DigestOf: %s, %d, %v; want %s, 1000", d, n, err, Digest(b))
	}
}

func TestRenderConfig(t *testing.T) {
	t.Parallel()
	cfg, err := renderConfig(ConfigHeader, ConfigVars{Addr: "127.0.0.1:1", MetricsAddr: "127.0.0.1:2", NATSAddr: "127.0.0.1:3", DataDir: "/data"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`data_dir: "/data"`, `serve: {listen: "127.0.0.1:1"}`, `metrics: {listen: "127.0.0.1:2"}`, `{listen: "127.0.0.1:3"}`} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("rendered ConfigHeader lacks %s:\n%s", want, cfg)
		}
	}
	if _, err := renderConfig("x: {{.Bogus}}\n", ConfigVars{}); err == nil {
		t.Error("renderConfig accepted an unknown key")
	}
}
