package ref

import (
	"fmt"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
)

// MaxImageLength bounds an image reference string.
const MaxImageLength = 512

// Image is a parsed image reference as regwarm sync and NATS messages take
// it: either <registry>/<repo>[:tag|@digest] naming a local registry, or
// <host>/<repo>[:tag|@digest] naming an upstream host.
type Image struct {
	Host     string // upstream host (first segment with '.', ':' or "localhost"); "" for a local registry
	Registry string // local registry name; "" when Host is set
	Repo     string
	Tag      string // "latest" when neither tag nor digest is given; kept beside a digest
	Digest   digest.Digest
}

// Reference returns the digest when there is one, else the tag: a
// reference with both (repo:tag@digest) is pinned by its digest.
func (i Image) Reference() string {
	if i.Digest != "" {
		return i.Digest.String()
	}
	return i.Tag
}

// String formats the image back into a reference: <first>/<repo>:<tag>,
// <first>/<repo>@<digest>, or both (<first>/<repo>:<tag>@<digest>) when
// the image was given with both. ParseImage(i.String()) returns i.
func (i Image) String() string {
	first := i.Registry
	if i.Host != "" {
		first = i.Host
	}
	s := first + "/" + i.Repo
	if i.Tag != "" {
		s += ":" + i.Tag
	}
	if i.Digest != "" {
		s += "@" + i.Digest.String()
	}
	return s
}

// ParseImage parses an image reference. URLs, whitespace and control
// characters are rejected: a reference names an image, never a location.
func ParseImage(s string) (Image, error) {
	bad := func(why string) (Image, error) {
		return Image{}, fmt.Errorf("%w: %q: %s", ErrInvalidImage, trim(s), why)
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > MaxImageLength {
		return bad(fmt.Sprintf("longer than %d bytes", MaxImageLength))
	}
	if strings.Contains(s, "://") {
		return bad("a URL is not an image name")
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f {
			return bad("contains whitespace or control characters")
		}
	}
	var img Image
	rest := s
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		d, err := ParseDigest(rest[at+1:])
		if err != nil {
			return bad(err.Error())
		}
		img.Digest, rest = d, rest[:at]
	}
	if slash := strings.LastIndexByte(rest, '/'); slash >= 0 {
		if colon := strings.LastIndexByte(rest, ':'); colon > slash {
			img.Tag, rest = rest[colon+1:], rest[:colon]
			if err := ValidTag(img.Tag); err != nil {
				return bad(err.Error())
			}
		}
	}
	first, repo, ok := strings.Cut(rest, "/")
	if !ok || first == "" || repo == "" {
		return bad("want <registry>/<repository>[:tag|@digest] or <host>/<repository>[:tag|@digest]")
	}
	if strings.ContainsAny(first, ".:") || first == "localhost" {
		img.Host = strings.ToLower(first)
		if !validHost(img.Host) {
			return bad("invalid host")
		}
		if IsDockerHub(img.Host) && !strings.Contains(repo, "/") {
			repo = "library/" + repo
		}
	} else {
		if err := ValidRegistry(first); err != nil {
			return bad(err.Error())
		}
		img.Registry = first
	}
	if err := ValidName(repo); err != nil {
		return bad(err.Error())
	}
	img.Repo = repo
	if img.Tag == "" && img.Digest == "" {
		img.Tag = "latest"
	}
	return img, nil
}

// DockerHub is Docker Hub's canonical host name.
const DockerHub = "docker.io"

// dockerHubAliases are the other names Docker Hub goes by; this is the one
// list of them.
var dockerHubAliases = []string{"index.docker.io", "registry-1.docker.io"}

// IsDockerHub reports whether host, in any case, is one of Docker Hub's
// names.
func IsDockerHub(host string) bool {
	h := strings.ToLower(host)
	return h == DockerHub || slices.Contains(dockerHubAliases, h)
}

func validHost(h string) bool {
	name, port, hasPort := strings.Cut(h, ":")
	if name == "" || len(h) > 253 {
		return false
	}
	if hasPort {
		if port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
			return false
		}
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return !strings.HasPrefix(name, ".") && !strings.HasPrefix(name, "-") && !strings.Contains(name, "..")
}
