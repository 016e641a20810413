package registryapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// secEnv is a handler with auth called directly (the client address is
// the request's RemoteAddr).
type secEnv struct {
	t        *testing.T
	h        *Handler
	dir      string
	htpasswd string
}

// newSecEnv builds a handler with users ci and dev (password <user>-secret,
// bcrypt cost), the rules of newAuthEnv and extra YAML below auth:.
func newSecEnv(t *testing.T, cost int, serve, extraAuth string) *secEnv {
	t.Helper()
	dir := t.TempDir()
	e := &secEnv{t: t, dir: dir, htpasswd: filepath.Join(dir, "htpasswd")}
	e.writeUsers(cost, "ci", "dev")
	cfg, err := config.Parse([]byte(`version: 1
data_dir: ` + dir + `
serve:
  listen: 127.0.0.1:5000
` + serve + `
registries:
  - {name: hub, default: true, push: true}
  - {name: release, push: true}
auth:
  htpasswd_file: ` + e.htpasswd + `
  rules:
    - {registry: hub, users: [anonymous], allow: [pull]}
    - {registry: hub, users: ["*"], allow: [pull, push]}
    - {registry: release, users: [ci], allow: [pull, push, delete]}
` + extraAuth))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	if e.h, err = New(ConfigOf(cfg), st); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *secEnv) writeUsers(cost int, users ...string) {
	e.t.Helper()
	var lines []string
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-secret"), cost)
		if err != nil {
			e.t.Fatal(err)
		}
		lines = append(lines, u+":"+string(h))
	}
	if err := os.WriteFile(e.htpasswd, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// do serves one request from client (an IP address) with header pairs.
func (e *secEnv) do(client, method, path string, hdr ...string) resp {
	e.t.Helper()
	req := httptest.NewRequest(method, path, nil)
	req.RemoteAddr = client + ":40000"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return resp{rec.Code, rec.Header(), rec.Body.Bytes()}
}

// token fetches a token for user (anonymous: "") with the given scopes.
func (e *secEnv) token(user string, scopes ...string) string {
	e.t.Helper()
	path := "/auth/token?service=regwarm"
	for _, s := range scopes {
		path += "&scope=" + s
	}
	var hdr []string
	if user != "" {
		hdr = []string{"Authorization", basic(user)}
	}
	r := e.do("10.0.0.1", "GET", path, hdr...)
	r.expect(e.t, 200, "")
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(r.body, &tok); err != nil || tok.Token == "" {
		e.t.Fatalf("token response %s", r.body)
	}
	return tok.Token
}

func bearer(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// An unknown user costs a bcrypt comparison like a known user with a wrong
// password, so the answer time does not tell which users exist.
func TestLoginTimingUnknownUser(t *testing.T) {
	e := newSecEnv(t, 8, "", "  throttle: {max_failures: 1000, max_failures_per_client: 1000}\n")
	measure := func(auth string) time.Duration {
		var ds []time.Duration
		for range 7 {
			start := time.Now()
			e.do("10.0.0.1", "GET", "/v2/", "Authorization", auth).expect(t, 401, "UNAUTHORIZED")
			ds = append(ds, time.Since(start))
		}
		return median(ds)
	}
	known := measure("Basic " + base64.StdEncoding.EncodeToString([]byte("ci:wrong")))
	unknown := measure("Basic " + base64.StdEncoding.EncodeToString([]byte("nobody:wrong")))
	t.Logf("known user, wrong password: %v; unknown user: %v", known, unknown)
	if unknown*4 < known || known*4 < unknown {
		t.Fatalf("known user %v, unknown user %v: not the same order of magnitude", known, unknown)
	}
}

// After max_failures failures of a user from one address, logins of that
// user from there get 429 with Retry-After and no bcrypt work; the same
// user from another address still logs in.
func TestLoginThrottle(t *testing.T) {
	e := newSecEnv(t, bcrypt.MinCost, "", "  throttle: {max_failures: 3, max_failures_per_client: 10, window: 1m}\n")
	var compares atomic.Int32
	a := e.h.auth
	cmp := a.compare
	a.compare = func(h, p []byte) error { compares.Add(1); return cmp(h, p) }
	wrong := "Basic " + base64.StdEncoding.EncodeToString([]byte("ci:wrong"))
	for range 3 {
		e.do("10.0.0.66", "GET", "/v2/", "Authorization", wrong).expect(t, 401, "UNAUTHORIZED")
	}
	if compares.Load() != 3 {
		t.Fatalf("%d bcrypt comparisons, want 3", compares.Load())
	}
	for _, path := range []string{"/v2/", "/auth/token", "/v2/release/x/tags/list"} {
		r := e.do("10.0.0.66", "GET", path, "Authorization", basic("ci")) // even the right password
		r.expect(t, 429, "TOOMANYREQUESTS")
		if ra := r.header.Get("Retry-After"); ra == "" || ra == "0" {
			t.Fatalf("%s: Retry-After %q", path, ra)
		}
	}
	if compares.Load() != 3 {
		t.Fatalf("throttled logins ran bcrypt: %d comparisons", compares.Load())
	}
	// The attacker does not lock out ci elsewhere, nor other users here.
	e.do("10.0.0.7", "GET", "/v2/", "Authorization", basic("ci")).expect(t, 200, "")
	e.do("10.0.0.66", "GET", "/v2/", "Authorization", basic("dev")).expect(t, 200, "")
	// Guessing many users from one address hits the per-address limit.
	for i := range 10 {
		u := "Basic " + base64.StdEncoding.EncodeToString([]byte("guess"+string(rune('a'+i))+":x"))
		e.do("10.0.0.99", "GET", "/v2/", "Authorization", u)
	}
	e.do("10.0.0.99", "GET", "/v2/", "Authorization", basic("dev")).expect(t, 429, "TOOMANYREQUESTS")
	// After the window, the address may try again.
	a.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	e.do("10.0.0.66", "GET", "/v2/", "Authorization", basic("ci")).expect(t, 200, "")
}

func TestThrottleMemoryBounded(t *testing.T) {
	th := newThrottle(3, 10, time.Minute, 100, time.Now)
	for i := range 10000 {
		th.fail("u", clientAddr("10.1."+itoa(i/256)+"."+itoa(i%256)+":1"))
	}
	if n := th.len(); n > 100 {
		t.Fatalf("%d counters kept, cap 100", n)
	}
}

func itoa(i int) string { return big.NewInt(int64(i)).String() }

// A token carries the requested actions the rules allow, and a request
// with it is checked against the token's access claims and the rules.
func TestTokenScope(t *testing.T) {
	e := newSecEnv(t, bcrypt.MinCost, "", "")
	tok := e.token("ci", "repository:release/x:pull")
	e.do("10.0.0.1", "GET", "/v2/release/x/tags/list", bearer(tok)...).expect(t, 404, "NAME_UNKNOWN")
	r := e.do("10.0.0.1", "POST", "/v2/release/x/blobs/uploads/", bearer(tok)...)
	r.expect(t, 401, "UNAUTHORIZED")
	if !strings.Contains(r.header.Get("WWW-Authenticate"), `scope="repository:release/x:pull,push"`) {
		t.Fatalf("challenge %q", r.header.Get("WWW-Authenticate"))
	}
	e.do("10.0.0.1", "GET", "/v2/release/y/tags/list", bearer(tok)...).expect(t, 401, "UNAUTHORIZED")
	e.do("10.0.0.1", "DELETE", "/v2/release/x/manifests/sha256:"+strings.Repeat("a", 64), bearer(tok)...).expect(t, 401, "UNAUTHORIZED")

	// Two scope parameters, one of them beyond the rules: dev gets only pull
	// on hub, nothing on release.
	tok = e.token("dev", "repository:hub/x:pull,push,delete", "repository:release/x:pull")
	claims := decodeClaims(t, tok)
	if len(claims.Access) != 1 || claims.Access[0].Name != "hub/x" || !slices.Equal(claims.Access[0].Actions, []string{"pull", "push"}) {
		t.Fatalf("access %+v", claims.Access)
	}
	if claims.Issuer != "regwarm" || claims.Subject != "dev" || !slices.Equal(claims.Audience, jwt.ClaimStrings{"regwarm"}) ||
		claims.ID == "" || claims.ExpiresAt == nil || claims.NotBefore == nil || claims.IssuedAt == nil {
		t.Fatalf("claims %+v", claims)
	}
	e.do("10.0.0.1", "POST", "/v2/hub/x/blobs/uploads/", bearer(tok)...).expect(t, 202, "")
	e.do("10.0.0.1", "GET", "/v2/release/x/tags/list", bearer(tok)...).expect(t, 403, "DENIED")
	// The anonymous token of the anonymous pull flow.
	anon := e.token("", "repository:library/alpine:pull")
	e.do("10.0.0.1", "GET", "/v2/library/alpine/tags/list", bearer(anon)...).expect(t, 404, "NAME_UNKNOWN")
	e.do("10.0.0.1", "GET", "/v2/library/busybox/tags/list", bearer(anon)...).expect(t, 401, "UNAUTHORIZED")
}

func decodeClaims(t *testing.T, tok string) tokenClaims {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c tokenClaims
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// sign makes a token with key for the claims.
func sign(t *testing.T, key crypto.Signer, c tokenClaims) string {
	t.Helper()
	m := jwt.SigningMethod(jwt.SigningMethodES256)
	if _, ok := key.(*ecdsa.PrivateKey); !ok {
		m = jwt.SigningMethodRS256
	}
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claimsFor(iss, aud string, exp, nbf time.Time, acc ...access) tokenClaims {
	return tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Issuer: iss, Subject: "ci", Audience: jwt.ClaimStrings{aud},
		ExpiresAt: jwt.NewNumericDate(exp), NotBefore: jwt.NewNumericDate(nbf), IssuedAt: jwt.NewNumericDate(time.Now())}, Access: acc}
}

var pullX = access{Type: "repository", Name: "release/x", Actions: []string{"pull"}}

// Tokens signed with the shared key file but expired, not yet valid, for
// another audience or issuer, or signed with another key, are refused.
func TestTokenClaimsChecked(t *testing.T) {
	e := newSecEnv(t, bcrypt.MinCost, "", "")
	b, err := os.ReadFile(filepath.Join(e.dir, "auth-token.key"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := parsePrivateKey(b)
	if err != nil {
		t.Fatalf("key file: %v", err)
	}
	key := k.(crypto.Signer)
	fi, _ := os.Stat(filepath.Join(e.dir, "auth-token.key"))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tests := []struct {
		name   string
		tok    string
		status int
	}{
		{"valid", sign(t, key, claimsFor("regwarm", "regwarm", now.Add(time.Minute), now, pullX)), 404},
		{"expired", sign(t, key, claimsFor("regwarm", "regwarm", now.Add(-time.Minute), now.Add(-2*time.Minute), pullX)), 401},
		{"not yet valid", sign(t, key, claimsFor("regwarm", "regwarm", now.Add(time.Hour), now.Add(time.Minute), pullX)), 401},
		{"wrong audience", sign(t, key, claimsFor("regwarm", "elsewhere", now.Add(time.Minute), now, pullX)), 401},
		{"wrong issuer", sign(t, key, claimsFor("mallory", "regwarm", now.Add(time.Minute), now, pullX)), 401},
		{"other key", sign(t, other, claimsFor("regwarm", "regwarm", now.Add(time.Minute), now, pullX)), 401},
		{"alg none", noneToken(claimsFor("regwarm", "regwarm", now.Add(time.Minute), now, pullX)), 401},
	}
	for _, tt := range tests {
		r := e.do("10.0.0.1", "GET", "/v2/release/x/tags/list", bearer(tt.tok)...)
		if r.status != tt.status {
			t.Errorf("%s: status %d, want %d (%s)", tt.name, r.status, tt.status, r.body)
		}
		if ch := r.header.Get("WWW-Authenticate"); r.status == 401 && !strings.HasSuffix(ch, `scope="repository:release/x:pull"`) {
			t.Errorf("%s: challenge %q names no scope for a new token", tt.name, ch)
		}
	}
}

func noneToken(c tokenClaims) string {
	s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, c).SignedString(jwt.UnsafeAllowNoneSignatureType)
	return s
}

// Tokens of an external issuer are verified with the certificates of
// auth.external.rootcert_bundle, and the challenge names its realm.
func TestExternalIssuer(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "token signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newSecEnv(t, bcrypt.MinCost, "", `  external:
    realm: https://auth.example.com/token
    service: registry.example.com
    issuer: auth.example.com
    rootcert_bundle: `+bundle+"\n")
	r := e.do("10.0.0.1", "GET", "/v2/release/x/tags/list")
	r.expect(t, 401, "UNAUTHORIZED")
	if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, `Bearer realm="https://auth.example.com/token",service="registry.example.com"`) {
		t.Fatalf("challenge %q", got)
	}
	now := time.Now()
	good := sign(t, key, claimsFor("auth.example.com", "registry.example.com", now.Add(time.Minute), now, pullX))
	e.do("10.0.0.1", "GET", "/v2/release/x/tags/list", bearer(good)...).expect(t, 404, "NAME_UNKNOWN")
	// The claims still bind: no push, no other repository.
	e.do("10.0.0.1", "POST", "/v2/release/x/blobs/uploads/", bearer(good)...).expect(t, 401, "UNAUTHORIZED")
	e.do("10.0.0.1", "GET", "/v2/release/y/tags/list", bearer(good)...).expect(t, 401, "UNAUTHORIZED")
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, tok := range map[string]string{
		"unknown key":    sign(t, other, claimsFor("auth.example.com", "registry.example.com", now.Add(time.Minute), now, pullX)),
		"wrong audience": sign(t, key, claimsFor("auth.example.com", "regwarm", now.Add(time.Minute), now, pullX)),
		"wrong issuer":   sign(t, key, claimsFor("regwarm", "registry.example.com", now.Add(time.Minute), now, pullX)),
		"expired":        sign(t, key, claimsFor("auth.example.com", "registry.example.com", now.Add(-time.Minute), now.Add(-time.Hour), pullX)),
	} {
		if r := e.do("10.0.0.1", "GET", "/v2/release/x/tags/list", bearer(tok)...); r.status != 401 {
			t.Errorf("%s: status %d (%s)", name, r.status, r.body)
		}
	}
}

// The realm comes from serve.external_url (or serve.listen), never from
// the request's Host or X-Forwarded-* headers.
func TestRealmIgnoresHost(t *testing.T) {
	for _, tt := range []struct{ serve, realm string }{
		{"  external_url: https://registry.example.com", "https://registry.example.com/auth/token"},
		{"  external_url: https://registry.example.com:8443/", "https://registry.example.com:8443/auth/token"},
		{"", "http://127.0.0.1:5000/auth/token"},
	} {
		e := newSecEnv(t, bcrypt.MinCost, tt.serve, "")
		r := e.do("10.0.0.1", "GET", "/v2/release/x/tags/list", "Host", "evil.example.net", "X-Forwarded-Proto", "https",
			"X-Forwarded-Host", "evil.example.net")
		want := `Bearer realm="` + tt.realm + `",service="regwarm",scope="repository:release/x:pull"`
		if got := r.header.Get("WWW-Authenticate"); got != want {
			t.Errorf("challenge %q, want %q", got, want)
		}
	}
}

// A changed htpasswd file is picked up without a restart.
func TestHtpasswdReload(t *testing.T) {
	e := newSecEnv(t, bcrypt.MinCost, "", "")
	now := time.Now()
	e.h.auth.now = func() time.Time { return now }
	e.do("10.0.0.1", "GET", "/v2/", "Authorization", basic("ops")).expect(t, 401, "UNAUTHORIZED")
	tok := e.token("dev", "repository:hub/x:pull")
	e.writeUsers(bcrypt.MinCost, "ci", "ops")
	later := now.Add(2 * time.Second)
	if err := os.Chtimes(e.htpasswd, later, later); err != nil {
		t.Fatal(err)
	}
	e.h.auth.now = func() time.Time { return later }
	e.do("10.0.0.2", "GET", "/v2/", "Authorization", basic("ops")).expect(t, 200, "")
	e.do("10.0.0.2", "GET", "/v2/", "Authorization", basic("dev")).expect(t, 401, "UNAUTHORIZED")
	e.do("10.0.0.2", "GET", "/v2/hub/x/tags/list", bearer(tok)...).expect(t, 401, "UNAUTHORIZED") // dev's token
}

// Concurrent bcrypt work is bounded by the semaphore.
func TestBcryptBounded(t *testing.T) {
	e := newSecEnv(t, bcrypt.MinCost, "", "  throttle: {max_failures: 1000, max_failures_per_client: 1000}\n")
	var running, peak atomic.Int32
	a := e.h.auth
	cmp := a.compare
	a.compare = func(h, p []byte) error {
		n := running.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		defer running.Add(-1)
		return cmp(h, p)
	}
	done := make(chan struct{})
	for i := range 32 {
		go func() {
			defer func() { done <- struct{}{} }()
			e.do("10.0.1."+itoa(i), "GET", "/v2/", "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("ci:x"+itoa(i))))
		}()
	}
	for range 32 {
		<-done
	}
	if p := int(peak.Load()); p > a.bcryptN.size {
		t.Fatalf("%d bcrypt comparisons at once, bound %d", p, a.bcryptN.size)
	}
}

func TestParseScope(t *testing.T) {
	for in, want := range map[string]string{
		"repository:hub/x:pull,push":            "repository hub/x [pull push]",
		"repository:localhost:5000/x:pull":      "repository localhost:5000/x [pull]",
		"registry:catalog:*":                    "registry catalog [*]",
		"repository:x:":                         "",
		"repository::pull":                      "",
		"nonsense":                              "",
		"repository:hub/x:pull,pull,,push,push": "repository hub/x [pull push]",
	} {
		a, ok := parseScope(in)
		got := ""
		if ok {
			got = a.Type + " " + a.Name + " " + "[" + strings.Join(a.Actions, " ") + "]"
		}
		if got != want {
			t.Errorf("parseScope(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseToken feeds arbitrary bearer tokens and scopes to the parsers:
// no panic, and nothing but a token signed with the key passes.
func FuzzParseToken(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	v := &verifier{keys: []crypto.PublicKey{key.Public()}, issuer: "regwarm", service: "regwarm", now: time.Now}
	s := &signer{key: key, method: jwt.SigningMethodES256, issuer: "regwarm", service: "regwarm", ttl: time.Minute}
	good, _ := s.issue("ci", []access{pullX}, time.Now())
	f.Add(good)
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJjaSJ9.")
	f.Add("a.b.c")
	f.Add("repository:hub/x:pull")
	f.Fuzz(func(t *testing.T, tok string) {
		parseScope(tok)
		c, err := v.parse(tok)
		if err == nil && tok != good {
			// Only re-encodings of a valid signature could pass; they must
			// carry the signed claims.
			if c.Subject != "ci" || !c.allows("release/x", "pull") {
				t.Fatalf("accepted %q with claims %+v", tok, c)
			}
		}
	})
}

// containerd asks for tokens with an OAuth2 password grant (POST); other
// grants get 400 so that it falls back to GET.
func TestTokenOAuthPost(t *testing.T) {
	e := newSecEnv(t, bcrypt.MinCost, "", "")
	post := func(form string) resp {
		req := httptest.NewRequest("POST", "/auth/token", strings.NewReader(form))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.RemoteAddr = "10.0.0.5:1234"
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, req)
		return resp{rec.Code, rec.Header(), rec.Body.Bytes()}
	}
	r := post("grant_type=password&username=ci&password=ci-secret&service=regwarm&client_id=containerd-client&scope=repository%3Arelease%2Fx%3Apull%2Cpush")
	r.expect(t, 200, "")
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(r.body, &tok); err != nil || tok.AccessToken == "" {
		t.Fatalf("token answer %s", r.body)
	}
	c := decodeClaims(t, tok.AccessToken)
	if c.Subject != "ci" || len(c.Access) != 1 || !slices.Equal(c.Access[0].Actions, []string{"pull", "push"}) {
		t.Fatalf("claims %+v", c)
	}
	post("grant_type=password&username=ci&password=wrong").expect(t, 401, "UNAUTHORIZED")
	if r := post("grant_type=refresh_token&refresh_token=x"); r.status != 400 {
		t.Fatalf("refresh grant: %d %s", r.status, r.body)
	}
}

// A token request does not carry ?ns=: an unprefixed name is granted what
// the rules allow in the default registry or a mirrored one, and each
// request is checked against its own registry's rules again.
func TestTokenScopeMirrorNames(t *testing.T) {
	dir := t.TempDir()
	e := &secEnv{t: t, dir: dir, htpasswd: filepath.Join(dir, "htpasswd")}
	e.writeUsers(bcrypt.MinCost, "ci")
	cfg, err := config.Parse([]byte(`version: 1
data_dir: ` + dir + `
registries:
  - {name: local, default: true, push: true}
  - {name: quay, connectors: [quay]}
connectors:
  - {name: quay, url: "http://127.0.0.1:1", host: quay.io}
auth:
  htpasswd_file: ` + e.htpasswd + `
  rules:
    - {registry: quay, users: [anonymous], allow: [pull]}
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	if e.h, err = New(ConfigOf(cfg), st); err != nil {
		t.Fatal(err)
	}
	tok := e.token("", "repository:org/app:pull,push")
	c := decodeClaims(t, tok)
	if len(c.Access) != 1 || !slices.Equal(c.Access[0].Actions, []string{"pull"}) {
		t.Fatalf("access %+v", c.Access)
	}
	// The mirror request passes; the same name in the default registry,
	// whose rules deny anonymous pulls, does not.
	if r := e.do("10.0.0.1", "GET", "/v2/org/app/tags/list?ns=quay.io", bearer(tok)...); r.status == 401 || r.status == 403 {
		t.Fatalf("mirror pull: %d %s", r.status, r.body)
	}
	e.do("10.0.0.1", "GET", "/v2/org/app/tags/list", bearer(tok)...).expect(t, 401, "UNAUTHORIZED")
}

// The key file: the 32-byte HMAC key of earlier versions is replaced by an
// EC key; an RSA key signs RS256; anything else is an error naming the field.
func TestTokenKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	if err := os.WriteFile(path, make([]byte, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, m, err := loadSigner(path); err != nil || m.Alg() != "ES256" {
		t.Fatalf("old key: %v %v", m, err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "-----BEGIN PRIVATE KEY-----") {
		t.Fatalf("old key not replaced: %q", b)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}), 0o600); err != nil {
		t.Fatal(err)
	}
	key, m, err := loadSigner(path)
	if err != nil || m.Alg() != "RS256" {
		t.Fatalf("rsa key: %v %v", m, err)
	}
	s := &signer{key: key, method: m, issuer: "regwarm", service: "regwarm", ttl: time.Minute}
	tok, err := s.issue("ci", []access{pullX}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v := &verifier{keys: []crypto.PublicKey{key.Public()}, issuer: "regwarm", service: "regwarm", now: time.Now}
	if c, err := v.parse(tok); err != nil || !c.allows("release/x", "pull") {
		t.Fatalf("RS256 token: %v", err)
	}
	if err := os.WriteFile(path, []byte("not a key, and longer than thirty-two bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadSigner(path); err == nil || !strings.Contains(err.Error(), "auth.token.key_file") {
		t.Fatalf("bad key file: %v", err)
	}
}

// The bcrypt gate serves clients without recent failures before guessers,
// and a waiter that gives up leaks no slot.
func TestGateOrder(t *testing.T) {
	g := newGate(1)
	ctx := t.Context()
	if err := g.acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 4)
	var done sync.WaitGroup
	wait := func(name string, first bool) {
		done.Add(1)
		go func() {
			defer done.Done()
			if err := g.acquire(ctx, first); err == nil {
				order <- name
				g.release()
			}
		}()
	}
	queued := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			g.mu.Lock()
			q := len(g.high) + len(g.low)
			g.mu.Unlock()
			if q == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d waiters, want %d", q, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wait("guesser1", false)
	queued(1)
	wait("guesser2", false)
	queued(2)
	// One that gives up while queued.
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- g.acquire(cctx, true) }()
	queued(3)
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("canceled acquire succeeded")
	}
	wait("user", true)
	queued(3)
	g.release()
	got := []string{<-order, <-order, <-order}
	if !slices.Equal(got, []string{"user", "guesser1", "guesser2"}) {
		t.Fatalf("order %v", got)
	}
	done.Wait()
	if g.free != 1 {
		t.Fatalf("%d free slots after all released, want 1", g.free)
	}
}
