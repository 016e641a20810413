package registryapi

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/ref"
)

// Actions a rule can allow.
const (
	actionPull   = "pull"
	actionPush   = "push"
	actionDelete = "delete"
)

// anonymous is the user name rules use for requests without credentials.
const anonymous = "anonymous"

// htpasswdRecheck is how often the htpasswd file's mtime is looked at.
const htpasswdRecheck = time.Second

// authenticator checks credentials (htpasswd bcrypt entries, sent as Basic
// auth or exchanged for a token by the Docker token flow) and the access
// rules. A token grants what its access claims name, and every request is
// checked against the rules as well.
type authenticator struct {
	rules    []config.Rule
	realm    string // the challenge's realm and service
	service  string
	signer   *signer
	own      *verifier // tokens of signer
	external *verifier // tokens of auth.external; nil: none
	throttle *throttle
	bcryptN  *gate // bounds concurrent bcrypt work
	compare  func(hash, pass []byte) error
	now      func() time.Time
	log      *slog.Logger
	logins   *prometheus.CounterVec

	htpasswd string
	mu       sync.Mutex
	users    map[string][]byte
	dummy    []byte    // bcrypt hash compared for unknown users
	checked  time.Time // last look at the htpasswd file
	mtime    time.Time
	size     int64
	verified map[string]time.Time // sha256(user:password) → valid until
}

// newAuthenticator loads the htpasswd file and the token signing key,
// which every serve replica shares (auth.token.key_file).
func newAuthenticator(ac *config.Auth, serve config.Serve, log *slog.Logger, m *metrics.Set) (*authenticator, error) {
	a := &authenticator{
		rules: ac.Rules, htpasswd: ac.HtpasswdFile, now: time.Now, log: log, logins: m.Limits.Logins,
		compare: bcrypt.CompareHashAndPassword, verified: map[string]time.Time{},
		bcryptN: newGate(max(1, runtime.GOMAXPROCS(0))),
	}
	a.throttle = newThrottle(ac.Throttle.MaxFailures, ac.Throttle.MaxFailuresPerClient, ac.Throttle.Window.D(),
		ac.Throttle.MaxEntries, func() time.Time { return a.now() })
	if err := a.loadUsers(); err != nil {
		return nil, err
	}
	key, method, err := loadSigner(ac.Token.KeyFile)
	if err != nil {
		return nil, err
	}
	a.signer = &signer{key: key, method: method, kid: keyID(key.Public()), issuer: ac.Token.Issuer,
		service: ac.Token.Service, ttl: ac.Token.TTL.D()}
	now := func() time.Time { return a.now() }
	a.own = &verifier{keys: []crypto.PublicKey{key.Public()}, issuer: ac.Token.Issuer, service: ac.Token.Service, now: now}
	base, err := externalBase(serve)
	if err != nil {
		return nil, err
	}
	a.realm, a.service = base+"/auth/token", ac.Token.Service
	if e := ac.External; e != nil {
		keys, err := loadBundle(e.RootCertBundle)
		if err != nil {
			return nil, err
		}
		a.external = &verifier{keys: keys, issuer: e.Issuer, service: e.Service, now: now}
		a.realm, a.service = e.Realm, e.Service
	}
	return a, nil
}

// externalBase is scheme://host[:port] of the API as clients reach it:
// serve.external_url, else built from serve.listen; never from a request.
func externalBase(s config.Serve) (string, error) {
	if s.ExternalURL != "" {
		u, err := url.Parse(s.ExternalURL)
		if err != nil {
			return "", fmt.Errorf("serve.external_url: %w", err)
		}
		return u.Scheme + "://" + u.Host, nil
	}
	scheme := "http"
	if s.TLS.CertFile != "" {
		scheme = "https"
	}
	host, port, err := net.SplitHostPort(s.Listen)
	if err != nil {
		return "", fmt.Errorf("serve.listen: %w", err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return scheme + "://" + net.JoinHostPort(host, port), nil
}

// loadUsers (re)reads the htpasswd file; the caller holds a.mu or is the
// constructor.
func (a *authenticator) loadUsers() error {
	fi, err := os.Stat(a.htpasswd)
	if err != nil {
		return fmt.Errorf("auth.htpasswd_file: %w", err)
	}
	users, err := loadHtpasswd(a.htpasswd)
	if err != nil {
		return err
	}
	cost := 0 // the users' highest, so an unknown user costs what a known one does
	for _, h := range users {
		cost = max(cost, mustCost(h))
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	if a.dummy == nil || mustCost(a.dummy) != cost {
		if a.dummy, err = bcrypt.GenerateFromPassword([]byte(rand.Text()), cost); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	a.users, a.mtime, a.size = users, fi.ModTime(), fi.Size()
	a.verified = map[string]time.Time{}
	return nil
}

func mustCost(h []byte) int {
	c, _ := bcrypt.Cost(h)
	return c
}

// user returns the bcrypt hash of user, re-reading the htpasswd file when
// it changed (looked at no more than once a second).
func (a *authenticator) user(name string) ([]byte, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if now := a.now(); now.Sub(a.checked) >= htpasswdRecheck {
		a.checked = now
		if fi, err := os.Stat(a.htpasswd); err == nil && (!fi.ModTime().Equal(a.mtime) || fi.Size() != a.size) {
			if err := a.loadUsers(); err != nil {
				a.log.Error("htpasswd not reloaded, keeping the previous users", "error", err)
			} else {
				a.log.Info("htpasswd reloaded", "users", len(a.users))
			}
		}
	}
	h, ok := a.users[name]
	return h, ok
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

// Credential errors.
var (
	errBadCredentials = errors.New("bad credentials")
	errThrottled      = errors.New("too many failed logins")
)

// throttledError is errThrottled with the time to wait.
type throttledError struct{ wait time.Duration }

func (e *throttledError) Error() string { return errThrottled.Error() }
func (e *throttledError) Unwrap() error { return errThrottled }

// identity is who a request is from: user "" is anonymous; token is nil
// for Basic auth and no credentials (the rules alone decide).
type identity struct {
	user  string
	token *tokenClaims
}

// identify returns the request's identity.
func (a *authenticator) identify(r *http.Request) (identity, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return identity{}, nil
	}
	if user, pass, ok := r.BasicAuth(); ok {
		if err := a.login(r.Context(), clientAddr(r.RemoteAddr), user, pass); err != nil {
			return identity{}, err
		}
		return identity{user: user}, nil
	}
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		return a.verifyToken(strings.TrimSpace(tok))
	}
	return identity{}, errBadCredentials
}

// login checks a password. Unknown users cost a bcrypt comparison like
// known ones; after too many failures from the client it answers
// errThrottled without any bcrypt work.
func (a *authenticator) login(ctx context.Context, client, user, pass string) error {
	if wait := a.throttle.check(user, client); wait > 0 {
		a.logins.WithLabelValues(metrics.LoginThrottled).Inc()
		return &throttledError{wait: wait}
	}
	hash, known := a.user(user)
	sum := sha256.Sum256([]byte(user + "\x00" + pass))
	k := hex.EncodeToString(sum[:])
	a.mu.Lock()
	until, cached := a.verified[k]
	if !known {
		hash = a.dummy
	}
	a.mu.Unlock()
	if known && cached && a.now().Before(until) {
		a.logins.WithLabelValues(metrics.LoginOK).Inc()
		return nil
	}
	if err := a.bcryptN.acquire(ctx, !a.throttle.suspect(client)); err != nil {
		return err
	}
	err := a.compare(hash, []byte(pass))
	a.bcryptN.release()
	if err != nil || !known {
		a.throttle.fail(user, client)
		a.logins.WithLabelValues(metrics.LoginFailed).Inc()
		return errBadCredentials
	}
	a.throttle.succeed(user, client)
	a.logins.WithLabelValues(metrics.LoginOK).Inc()
	a.mu.Lock()
	if len(a.verified) > 10000 {
		a.verified = map[string]time.Time{}
	}
	a.verified[k] = a.now().Add(5 * time.Minute)
	a.mu.Unlock()
	return nil
}

// verifyToken checks a bearer token: one of ours (whose user must still
// exist), or one of the external issuer.
func (a *authenticator) verifyToken(tok string) (identity, error) {
	c, err := a.own.parse(tok)
	if err == nil {
		if c.Subject != "" {
			if _, ok := a.user(c.Subject); !ok {
				return identity{}, errBadCredentials // user removed since
			}
		}
		return identity{user: c.Subject, token: c}, nil
	}
	if a.external != nil {
		if c, err := a.external.parse(tok); err == nil {
			return identity{user: c.Subject, token: c}, nil
		}
	}
	return identity{}, errBadCredentials
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

// permits checks the rules and, for a token, its access claims; name is
// the repository as the client wrote it.
func (a *authenticator) permits(id identity, name, registry, action string) bool {
	return a.allowed(id.user, registry, action) && (id.token == nil || id.token.allows(name, action))
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

// challenge sets the Docker token flow challenge: the realm comes from
// the configuration (serve.external_url or auth.external), never from the
// request.
func (a *authenticator) challenge(w http.ResponseWriter, scope string) {
	v := fmt.Sprintf(`Bearer realm=%q,service=%q`, a.realm, a.service)
	if scope != "" {
		v += fmt.Sprintf(`,scope=%q`, scope)
	}
	w.Header().Set("WWW-Authenticate", v)
}

// throttled is the answer to a throttled login.
func throttled(err error) *apiError {
	var te *throttledError
	if !errors.As(err, &te) {
		return nil
	}
	ae := errorf(CodeTooManyRequests, "too many failed logins; try again later")
	ae.header = http.Header{"Retry-After": {strconv.Itoa(int(te.wait.Seconds() + 0.999))}}
	return ae
}

// serveToken is the token endpoint of the Docker token flow: Basic
// credentials (or none, for anonymous access) and scopes in, a signed JWT
// granting the requested actions the rules allow out.
func (h *Handler) serveToken(w http.ResponseWriter, r *http.Request, id string) {
	a := h.auth
	user := ""
	u, pass, hasCreds := r.BasicAuth()
	query := r.URL.Query()
	if r.Method == http.MethodPost {
		// OAuth2 password grant (containerd); other grants are refused with
		// 400, on which clients fall back to GET.
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"unsupported_grant_type"}`+"\n")
			return
		}
		u, pass, hasCreds = r.PostForm.Get("username"), r.PostForm.Get("password"), true
		query = r.Form
	}
	if hasCreds {
		if err := a.login(r.Context(), clientAddr(r.RemoteAddr), u, pass); err != nil {
			if ae := throttled(err); ae != nil {
				writeError(w, r, ae)
				return
			}
			a.challenge(w, "")
			writeError(w, r, errorf(CodeUnauthorized, "invalid username or password"))
			return
		}
		user = u
	} else if !a.anonymousAllowed() {
		w.Header().Set("WWW-Authenticate", `Basic realm="regwarm"`)
		writeError(w, r, errorf(CodeUnauthorized, ""))
		return
	}
	var scopes []string
	for _, s := range query["scope"] {
		scopes = append(scopes, strings.Fields(s)...)
	}
	if len(scopes) > maxScopes {
		writeError(w, r, errorf(CodeDenied, "at most %d scopes per token", maxScopes))
		return
	}
	granted := []access{}
	for _, s := range scopes {
		req, ok := parseScope(s)
		if !ok {
			writeError(w, r, errorf(CodeDenied, "invalid scope %q", s))
			return
		}
		if g, ok := h.grant(user, req); ok {
			granted = append(granted, g)
		}
	}
	now := a.now()
	tok, err := a.signer.issue(user, granted, now)
	if err != nil {
		writeError(w, r, h.fail(r, route{kind: routeOther, id: id}, err))
		return
	}
	writeJSON(w, r, "application/json", map[string]any{
		"token": tok, "access_token": tok, "expires_in": int(a.signer.ttl.Seconds()),
		"issued_at": now.UTC().Format(time.RFC3339),
	})
}

// grant is the part of a requested access the rules allow user.
func (h *Handler) grant(user string, req access) (access, bool) {
	switch req.Type {
	case "registry":
		// The catalog is filtered per registry by the rules.
		return access{Type: "registry", Name: "catalog", Actions: []string{"*"}}, req.Name == "catalog"
	case "repository":
	default:
		return access{}, false
	}
	regs := h.scopeRegistries(req.Name)
	want := req.Actions
	if slices.Contains(want, "*") {
		want = []string{actionPull, actionPush, actionDelete}
	}
	g := access{Type: "repository", Name: req.Name, Actions: []string{}}
	for _, act := range want {
		if !slices.Contains([]string{actionPull, actionPush, actionDelete}, act) {
			continue
		}
		if slices.ContainsFunc(regs, func(reg string) bool { return h.auth.allowed(user, reg, act) }) {
			g.Actions = append(g.Actions, act)
		}
	}
	return g, len(g.Actions) > 0
}

// scopeRegistries lists the registries a repository name of a token
// request may mean: the one it names, else the default registry and those
// a ?ns= mirror request could reach (a token request does not carry ns;
// each request is checked against the rules of its own registry again).
func (h *Handler) scopeRegistries(name string) []string {
	if ref.ValidName(name) != nil {
		return nil
	}
	first, rest, _ := strings.Cut(name, "/")
	if _, ok := h.regs.Registry(first); ok {
		if rest == "" {
			return nil
		}
		return []string{first}
	}
	var regs []string
	if reg, ok := h.regs.DefaultRegistry(); ok {
		regs = append(regs, reg.Name)
	}
	for _, host := range h.regs.ConnectorHosts() {
		if reg, ok := h.regs.RegistryForHost(host); ok && !slices.Contains(regs, reg.Name) {
			regs = append(regs, reg.Name)
		}
	}
	return regs
}

// authorize checks a routed request; it returns nil when it may proceed.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	a := h.auth
	id, err := a.identify(r)
	if err != nil {
		if ae := throttled(err); ae != nil {
			return ae
		}
		a.challenge(w, scopeFor(rt, actionFor(r.Method))) // e.g. an expired token: the client gets a new one
		return errorf(CodeUnauthorized, "invalid credentials")
	}
	switch rt.kind {
	case routePing:
		// Clients decide from the ping whether to authenticate: without an
		// Authorization header they get the challenge, and anonymous
		// clients then fetch an anonymous token.
		if r.Header.Get("Authorization") == "" {
			a.challenge(w, "")
			return errorf(CodeUnauthorized, "")
		}
		return nil
	case routeCatalog:
		return nil // filtered per registry by the catalog handler
	}
	action := routeAction(rt, r.Method)
	if a.permits(id, rt.name, rt.repo.Registry, action) {
		if rt.kind == routeUploadStart && r.URL.Query().Get("from") != "" {
			from := r.URL.Query().Get("from")
			if src, ae := h.resolveName(from, ""); ae == nil && !a.permits(id, from, src.Registry, actionPull) {
				// Not allowed to read the source: mount quietly falls back to an upload.
				q := r.URL.Query()
				q.Del("mount")
				q.Del("from")
				r.URL.RawQuery = q.Encode()
			}
		}
		return nil
	}
	if id.user == "" || (id.token != nil && a.allowed(id.user, rt.repo.Registry, action)) {
		// No credentials, or a token without this scope: the client gets
		// (another) token for the scope named in the challenge.
		a.challenge(w, scopeFor(rt, action))
		return errorf(CodeUnauthorized, "authentication required")
	}
	return errorf(CodeDenied, "user %s may not %s in registry %s", id.user, action, rt.repo.Registry)
}

// scopeFor is the scope a request on rt needs ("" for ping and catalog);
// a push asks for pull too, as clients do.
func scopeFor(rt route, action string) string {
	if rt.name == "" {
		return ""
	}
	if action == actionPush {
		action = actionPull + "," + actionPush
	}
	return "repository:" + rt.name + ":" + action
}

// pullFilter returns a check of whether the request may pull from a
// registry; the request's user is identified once.
func (h *Handler) pullFilter(r *http.Request) func(registry string) bool {
	if h.auth == nil {
		return func(string) bool { return true }
	}
	id, err := h.auth.identify(r)
	return func(registry string) bool { return err == nil && h.auth.allowed(id.user, registry, actionPull) }
}
