// Package ref parses and validates the names regwarm accepts: registry and
// repository names, tags, digests and image references.
package ref

import (
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/fault"
)

// Error kinds returned by this package; match them with errors.Is.
var (
	ErrInvalidName     = fault.New(fault.Invalid, "invalid repository name")
	ErrInvalidRegistry = fault.New(fault.Invalid, "invalid registry name")
	ErrInvalidTag      = fault.New(fault.Invalid, "invalid tag")
	ErrInvalidDigest   = fault.New(fault.Invalid, "invalid digest")
	ErrUnsupported     = fault.New(fault.Invalid, "unsupported digest algorithm")
	ErrInvalidImage    = fault.New(fault.Invalid, "invalid image reference")
)

// MaxNameLength bounds a repository name, as distribution does.
const MaxNameLength = 255

var (
	component  = `[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*`
	nameRE     = regexp.MustCompile(`^` + component + `(?:/` + component + `)*$`)
	tagRE      = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	registryRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	algRE      = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*$`)
)

// Algorithms lists the digest algorithms regwarm stores, with hex lengths.
var Algorithms = map[digest.Algorithm]int{
	digest.SHA256: sha256.Size * 2,
	digest.SHA512: sha512.Size * 2,
}

// ValidName reports whether s is a valid OCI repository name.
func ValidName(s string) error {
	if s == "" || len(s) > MaxNameLength || !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %q", ErrInvalidName, s)
	}
	return nil
}

// ValidRegistry reports whether s is a valid local registry name.
func ValidRegistry(s string) error {
	if len(s) == 0 || len(s) > 64 || !registryRE.MatchString(s) {
		return fmt.Errorf("%w: %q", ErrInvalidRegistry, s)
	}
	return nil
}

// ValidTag reports whether s is a valid tag.
func ValidTag(s string) error {
	if !tagRE.MatchString(s) {
		return fmt.Errorf("%w: %q", ErrInvalidTag, s)
	}
	return nil
}

// ParseDigest parses and validates a digest string. Only sha256 and sha512
// are accepted; the hex part must be lower case and of the right length.
func ParseDigest(s string) (digest.Digest, error) {
	alg, hex, ok := strings.Cut(s, ":")
	if !ok || alg == "" || hex == "" {
		return "", fmt.Errorf("%w: %q", ErrInvalidDigest, trim(s))
	}
	n, known := Algorithms[digest.Algorithm(alg)]
	if !known {
		if !algRE.MatchString(alg) {
			return "", fmt.Errorf("%w: %q", ErrInvalidDigest, trim(s))
		}
		return "", fmt.Errorf("%w: %q", ErrUnsupported, alg)
	}
	if len(hex) != n {
		return "", fmt.Errorf("%w: %q", ErrInvalidDigest, trim(s))
	}
	for i := 0; i < len(hex); i++ {
		c := hex[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", fmt.Errorf("%w: %q", ErrInvalidDigest, trim(s))
		}
	}
	return digest.Digest(s), nil
}

// IsDigest reports whether s looks like a digest rather than a tag.
func IsDigest(s string) bool { return strings.Contains(s, ":") }

func trim(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
