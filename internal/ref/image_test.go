package ref

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestParseImage(t *testing.T) {
	t.Parallel()
	d := "sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		in   string
		want Image
	}{
		{"hub/library/alpine:3.20", Image{Registry: "hub", Repo: "library/alpine", Tag: "3.20"}},
		{"hub/library/alpine", Image{Registry: "hub", Repo: "library/alpine", Tag: "latest"}},
		{"hub/a/b@" + d, Image{Registry: "hub", Repo: "a/b", Digest: digest.Digest(d)}},
		{"docker.io/library/alpine:3.20", Image{Host: "docker.io", Repo: "library/alpine", Tag: "3.20"}},
		{"docker.io/alpine", Image{Host: "docker.io", Repo: "library/alpine", Tag: "latest"}},
		{"127.0.0.1:5000/x/y:v1", Image{Host: "127.0.0.1:5000", Repo: "x/y", Tag: "v1"}},
		{"localhost/x:v1", Image{Host: "localhost", Repo: "x", Tag: "v1"}},
		{"Ghcr.IO/o/r:t", Image{Host: "ghcr.io", Repo: "o/r", Tag: "t"}},
		{"hub/a/b:v1@" + d, Image{Registry: "hub", Repo: "a/b", Tag: "v1", Digest: digest.Digest(d)}},
	}
	for _, tt := range tests {
		got, err := ParseImage(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseImage(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	// String keeps the tag beside the digest (found by FuzzParseImage,
	// testdata/fuzz/FuzzParseImage/tag-and-digest); the digest pins it.
	img := Image{Registry: "hub", Repo: "a/b", Tag: "v1", Digest: digest.Digest(d)}
	if got, want := img.String(), "hub/a/b:v1@"+d; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if img.Reference() != d {
		t.Errorf("Reference() = %q, want the digest", img.Reference())
	}
	for _, bad := range []string{"", "alpine", "hub/", "/x", "http://evil.example/x:y", "hub/x y", "hub/x\n", "hub/X:y",
		"hub/x:-y", "hub/x@sha256:zz", "Hub/x", "bad_host.example/x", strings.Repeat("a", 600), "hub/../x", "-a.b/x"} {
		if _, err := ParseImage(bad); !errors.Is(err, ErrInvalidImage) {
			t.Errorf("ParseImage(%q) = %v, want ErrInvalidImage", bad, err)
		}
	}
}

func FuzzParseImage(f *testing.F) {
	f.Add("hub/library/alpine:3.20")
	f.Add("docker.io/alpine@sha256:" + strings.Repeat("0", 64))
	f.Fuzz(func(t *testing.T, s string) {
		img, err := ParseImage(s)
		if err != nil {
			return
		}
		if len(img.String()) > len(s)+len("library/")+len(":latest") {
			t.Fatalf("ParseImage(%q) grew to %q", s, img.String())
		}
		again, err := ParseImage(img.String())
		if err != nil || again != img {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v, %v", s, img, img.String(), again, err)
		}
	})
}
