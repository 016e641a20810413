package registryapi

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// maxTokenLen bounds a bearer token before it is parsed.
const maxTokenLen = 16 << 10

// maxScopes bounds the scopes one token request may ask for.
const maxScopes = 64

// access is one grant of a token (Docker token spec): actions on a
// resource, e.g. {repository, hub/library/alpine, [pull]}.
type access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// tokenClaims are the claims of a registry token.
type tokenClaims struct {
	jwt.RegisteredClaims
	Access []access `json:"access"`
}

// allows reports whether the token grants action on the repository name
// (as the client writes it).
func (c *tokenClaims) allows(name, action string) bool {
	for _, a := range c.Access {
		if a.Type == "repository" && a.Name == name && (slices.Contains(a.Actions, action) || slices.Contains(a.Actions, "*")) {
			return true
		}
	}
	return false
}

// signer issues tokens and verifies its own.
type signer struct {
	key     crypto.Signer
	method  jwt.SigningMethod
	kid     string
	issuer  string
	service string
	ttl     time.Duration
}

// verifier checks tokens of one issuer: signature by one of keys, iss,
// aud, exp and nbf.
type verifier struct {
	keys    []crypto.PublicKey
	issuer  string
	service string
	now     func() time.Time
}

// tokenMethods are the algorithms accepted from an external issuer.
var tokenMethods = []string{"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}

// parse verifies tok and returns its claims.
func (v *verifier) parse(tok string) (*tokenClaims, error) {
	if len(tok) > maxTokenLen {
		return nil, errBadCredentials
	}
	var c tokenClaims
	_, err := jwt.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) {
		ks := jwt.VerificationKeySet{}
		for _, k := range v.keys {
			ks.Keys = append(ks.Keys, k)
		}
		return ks, nil
	}, jwt.WithValidMethods(tokenMethods), jwt.WithIssuer(v.issuer), jwt.WithAudience(v.service),
		jwt.WithExpirationRequired(), jwt.WithTimeFunc(v.now), jwt.WithLeeway(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadCredentials, err)
	}
	return &c, nil
}

// issue signs a token for user (anonymous: "") granting acc.
func (s *signer) issue(user string, acc []access, now time.Time) (string, error) {
	c := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    s.issuer,
			Subject:   user,
			Audience:  jwt.ClaimStrings{s.service},
			ExpiresAt: jwt.NewNumericDate(now.Add(s.ttl)),
			NotBefore: jwt.NewNumericDate(now.Add(-time.Second)),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        rand.Text(),
		},
		Access: acc,
	}
	if c.Access == nil {
		c.Access = []access{}
	}
	t := jwt.NewWithClaims(s.method, c)
	t.Header["kid"] = s.kid
	return t.SignedString(s.key)
}

// loadSigner reads the PEM private key at path (EC P-256: ES256, RSA:
// RS256), creating an EC P-256 key (mode 0600) when the file is absent.
// A 32-byte key of the earlier HMAC tokens is replaced.
func loadSigner(path string) (crypto.Signer, jwt.SigningMethod, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(b) == 32 && !bytes.Contains(b, []byte("-----BEGIN"))) {
		if err == nil {
			_ = os.Remove(path) // the HMAC key of earlier versions
		}
		b, err = createKey(path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("auth.token.key_file: %w", err)
	}
	k, err := parsePrivateKey(b)
	if err != nil {
		return nil, nil, fmt.Errorf("auth.token.key_file %s: %w", path, err)
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return k, jwt.SigningMethodES256, nil
		case elliptic.P384():
			return k, jwt.SigningMethodES384, nil
		}
		return nil, nil, fmt.Errorf("auth.token.key_file %s: EC keys must use P-256 or P-384", path)
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, nil, fmt.Errorf("auth.token.key_file %s: RSA keys need at least 2048 bits", path)
		}
		return k, jwt.SigningMethodRS256, nil
	}
	return nil, nil, fmt.Errorf("auth.token.key_file %s: want an EC (P-256) or RSA private key", path)
}

// createKey writes a new EC P-256 key to path, or returns the key another
// replica wrote first.
func createKey(path string) ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	return b, f.Close()
}

func parsePrivateKey(b []byte) (any, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key (want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")
		}
		switch blk.Type {
		case "PRIVATE KEY":
			return x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			return x509.ParsePKCS1PrivateKey(blk.Bytes)
		}
	}
}

// keyID is the libtrust-style key id (what distribution's token servers
// put in kid): base32 of the first 240 bits of sha256(public key DER), in
// groups of four.
func keyID(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	s := strings.TrimRight(base32.StdEncoding.EncodeToString(sum[:30]), "=")
	var parts []string
	for i := 0; i < len(s); i += 4 {
		parts = append(parts, s[i:min(i+4, len(s))])
	}
	return strings.Join(parts, ":")
}

// loadBundle reads the public keys of the PEM certificates in path.
func loadBundle(path string) ([]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth.external.rootcert_bundle: %w", err)
	}
	var keys []crypto.PublicKey
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("auth.external.rootcert_bundle %s: %w", path, err)
		}
		keys = append(keys, c.PublicKey)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("auth.external.rootcert_bundle %s: no PEM certificate", path)
	}
	return keys, nil
}

// parseScope parses one scope of a token request, "repository:NAME:ACTIONS"
// or "registry:catalog:*"; NAME may contain colons (a host:port prefix).
func parseScope(s string) (access, bool) {
	typ, rest, ok := strings.Cut(s, ":")
	i := strings.LastIndex(rest, ":")
	if !ok || i <= 0 || typ == "" {
		return access{}, false
	}
	a := access{Type: typ, Name: rest[:i]}
	for act := range strings.SplitSeq(rest[i+1:], ",") {
		if act != "" && !slices.Contains(a.Actions, act) {
			a.Actions = append(a.Actions, act)
		}
	}
	return a, len(a.Actions) > 0
}
