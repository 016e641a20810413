package registryapi

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/regwarm/regwarm/internal/config"
)

// Actions a rule can allow.
const (
	actionPull   = "pull"
	actionPush   = "push"
	actionDelete = "delete"
)

// anonymous is the user name rules use for requests without credentials.
const anonymous = "anonymous"

// tokenTTL is how long a token from /auth/token is valid.
const tokenTTL = 5 * time.Minute

// authenticator checks credentials (htpasswd bcrypt entries, sent as Basic
// auth or exchanged for a token by the Docker token flow) and the access
// rules. Tokens only prove who the user is; every request is checked
// against the rules.
type authenticator struct {
	users map[string][]byte
	rules []config.Rule
	key   []byte
	now   func() time.Time

	mu       sync.Mutex
	verified map[string]time.Time // sha256(user:password) → valid until
}

// newAuthenticator loads the htpasswd file and the token key, which lives
// in data_dir so that every serve replica sharing it accepts the tokens of
// the others.
func newAuthenticator(cfg *config.Config) (*authenticator, error) {
	users, err := loadHtpasswd(cfg.Auth.HtpasswdFile)
	if err != nil {
		return nil, err
	}
	key, err := tokenKey(filepath.Join(cfg.DataDir, "auth-token.key"))
	if err != nil {
		return nil, err
	}
	return &authenticator{users: users, rules: cfg.Auth.Rules, key: key, now: time.Now, verified: map[string]time.Time{}}, nil
}

func loadHtpasswd(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth.htpasswd_file: %w", err)
	}
	defer f.Close()
	users := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" || user == anonymous {
			return nil, fmt.Errorf("auth.htpasswd_file line %d: want user:bcrypt-hash (and no user named %q)", n, anonymous)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("auth.htpasswd_file line %d (user %s): only bcrypt entries are accepted (htpasswd -B)", n, user)
		}
		users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth.htpasswd_file: %w", err)
	}
	return users, nil
}

// tokenKey reads the HMAC key for tokens, creating it on first use.
func tokenKey(path string) ([]byte, error) {
	if b, err := os.ReadFile(path); err == nil && len(b) >= 32 {
		return b, nil
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("auth token key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return os.ReadFile(path) // another replica created it first
	}
	if err != nil {
		return nil, fmt.Errorf("auth token key: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return nil, fmt.Errorf("auth token key: %w", err)
	}
	return key, f.Close()
}

// errBadCredentials is returned for credentials that do not check out.
var errBadCredentials = errors.New("bad credentials")

// identify returns the request's user ("" for anonymous).
func (a *authenticator) identify(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", nil
	}
	if user, pass, ok := r.BasicAuth(); ok {
		if a.checkPassword(user, pass) {
			return user, nil
		}
		return "", errBadCredentials
	}
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		return a.verifyToken(strings.TrimSpace(tok))
	}
	return "", errBadCredentials
}

func (a *authenticator) checkPassword(user, pass string) bool {
	hash, ok := a.users[user]
	if !ok {
		return false
	}
	sum := sha256.Sum256([]byte(user + "\x00" + pass))
	k := hex.EncodeToString(sum[:])
	a.mu.Lock()
	until, cached := a.verified[k]
	a.mu.Unlock()
	if cached && a.now().Before(until) {
		return true
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return false
	}
	a.mu.Lock()
	if len(a.verified) > 10000 {
		a.verified = map[string]time.Time{}
	}
	a.verified[k] = a.now().Add(5 * time.Minute)
	a.mu.Unlock()
	return true
}

type tokenClaims struct {
	Sub string `json:"sub"`
	Exp int64  `json:"exp"`
}

func (a *authenticator) issueToken(user string) (string, time.Time) {
	exp := a.now().Add(tokenTTL)
	payload, _ := json.Marshal(tokenClaims{Sub: user, Exp: exp.Unix()})
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + a.sign(p), exp
}

func (a *authenticator) sign(p string) string {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(p))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (a *authenticator) verifyToken(tok string) (string, error) {
	p, sig, ok := strings.Cut(tok, ".")
	if !ok || subtle.ConstantTimeCompare([]byte(sig), []byte(a.sign(p))) != 1 {
		return "", errBadCredentials
	}
	raw, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return "", errBadCredentials
	}
	var c tokenClaims
	if json.Unmarshal(raw, &c) != nil || a.now().Unix() > c.Exp {
		return "", errBadCredentials
	}
	if c.Sub != "" {
		if _, ok := a.users[c.Sub]; !ok {
			return "", errBadCredentials // user removed since
		}
	}
	return c.Sub, nil
}

// allowed applies the rules: the first rule matching the registry and the
// user decides; no match denies.
func (a *authenticator) allowed(user, registry, action string) bool {
	for _, r := range a.rules {
		if r.Registry != "*" && r.Registry != registry {
			continue
		}
		if !userMatches(r.Users, user) {
			continue
		}
		return slices.Contains(r.Allow, action)
	}
	return false
}

func userMatches(users []string, user string) bool {
	if user == "" {
		return slices.Contains(users, anonymous)
	}
	return slices.Contains(users, user) || slices.Contains(users, "*")
}

// anonymousAllowed reports whether any rule lets anonymous clients in.
func (a *authenticator) anonymousAllowed() bool {
	for _, r := range a.rules {
		if slices.Contains(r.Users, anonymous) && len(r.Allow) > 0 {
			return true
		}
	}
	return false
}

// actionFor maps a method to the action it needs.
func actionFor(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead:
		return actionPull
	case http.MethodDelete:
		return actionDelete
	}
	return actionPush
}

// challenge sets the Docker token flow challenge for the request.
func challenge(w http.ResponseWriter, r *http.Request, scope string) {
	scheme := "http"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	v := fmt.Sprintf(`Bearer realm="%s://%s/auth/token",service="regwarm"`, scheme, r.Host)
	if scope != "" {
		v += fmt.Sprintf(`,scope="%s"`, scope)
	}
	w.Header().Set("WWW-Authenticate", v)
}

// serveToken is the token endpoint of the Docker token flow: Basic
// credentials (or none, for anonymous access) in, a signed token out.
func (h *Handler) serveToken(w http.ResponseWriter, r *http.Request) {
	user := ""
	if u, pass, ok := r.BasicAuth(); ok {
		if !h.auth.checkPassword(u, pass) {
			challenge(w, r, "")
			writeError(w, r, errorf(CodeUnauthorized, "invalid username or password"))
			return
		}
		user = u
	} else if !h.auth.anonymousAllowed() {
		w.Header().Set("WWW-Authenticate", `Basic realm="regwarm"`)
		writeError(w, r, errorf(CodeUnauthorized, ""))
		return
	}
	tok, exp := h.auth.issueToken(user)
	writeJSON(w, r, "application/json", map[string]any{
		"token": tok, "access_token": tok, "expires_in": int(tokenTTL.Seconds()),
		"issued_at": exp.Add(-tokenTTL).UTC().Format(time.RFC3339),
	})
}

// authorize checks a routed request; it returns nil when it may proceed.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	user, err := h.auth.identify(r)
	if err != nil {
		challenge(w, r, "")
		return errorf(CodeUnauthorized, "invalid credentials")
	}
	switch rt.kind {
	case routePing:
		// Clients decide from the ping whether to authenticate: without an
		// Authorization header they get the challenge, and anonymous
		// clients then fetch an anonymous token.
		if r.Header.Get("Authorization") == "" {
			challenge(w, r, "")
			return errorf(CodeUnauthorized, "")
		}
		return nil
	case routeCatalog:
		return nil // filtered per registry by the catalog handler
	}
	action := routeAction(rt, r.Method)
	if h.auth.allowed(user, rt.repo.Registry, action) {
		if rt.kind == routeUploadStart && r.URL.Query().Get("from") != "" {
			if src, ae := h.resolveName(r.URL.Query().Get("from"), ""); ae == nil && !h.auth.allowed(user, src.Registry, actionPull) {
				// Not allowed to read the source: mount quietly falls back to an upload.
				q := r.URL.Query()
				q.Del("mount")
				q.Del("from")
				r.URL.RawQuery = q.Encode()
			}
		}
		return nil
	}
	if user == "" {
		scope := "repository:" + rt.name + ":" + action
		challenge(w, r, scope)
		return errorf(CodeUnauthorized, "authentication required")
	}
	return errorf(CodeDenied, "user %s may not %s in registry %s", user, action, rt.repo.Registry)
}

// pullFilter returns a check of whether the request may pull from a
// registry; the request's user is identified once.
func (h *Handler) pullFilter(r *http.Request) func(registry string) bool {
	if h.auth == nil {
		return func(string) bool { return true }
	}
	user, err := h.auth.identify(r)
	return func(registry string) bool { return err == nil && h.auth.allowed(user, registry, actionPull) }
}
