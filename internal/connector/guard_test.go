package connector_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/connector"
)

const (
	password = "hunter2-connector-secret"
	token    = "upstream-issued-token"
)

var blob = []byte("private layer bytes")

// catcher is a server an attacker controls: it records what it receives,
// hands out tokens (as a realm) and serves the blob (as a CDN).
type catcher struct {
	*httptest.Server
	mu   sync.Mutex
	seen []http.Header
}

func (c *catcher) handle(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.seen = append(c.seen, r.Header.Clone())
	c.mu.Unlock()
	if strings.HasSuffix(r.URL.Path, "/token") {
		_ = json.NewEncoder(w).Encode(map[string]string{"token": token, "access_token": token})
		return
	}
	_, _ = w.Write(blob)
}

// requests returns the headers of every request received.
func (c *catcher) requests() []http.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]http.Header(nil), c.seen...)
}

// newCatcher starts a catcher on ip (a loopback address), TLS or not.
func newCatcher(t *testing.T, ip string, tls bool) *catcher {
	t.Helper()
	c := &catcher{}
	c.Server = httptest.NewUnstartedServer(http.HandlerFunc(c.handle))
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Listener.Close() // never served; replaced by ln
	c.Listener = ln
	if tls {
		c.StartTLS()
	} else {
		c.Start()
	}
	t.Cleanup(c.Close)
	return c
}

// upstream is a malicious registry: it wants a token from realm and
// answers blob GETs with a redirect to redirect (or the blob itself).
type upstream struct {
	realm, redirect string
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+token {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+u.realm+`",service="evil"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if strings.Contains(r.URL.Path, "/blobs/") {
		if u.redirect != "" {
			http.Redirect(w, r, u.redirect, http.StatusTemporaryRedirect)
			return
		}
		w.Header().Set("Content-Length", "19")
		_, _ = w.Write(blob)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// connectorTo builds a connector with a password to srv.
func connectorTo(t *testing.T, srv *httptest.Server, authHosts []string, opts ...connector.UpstreamOption) *connector.Upstream {
	t.Helper()
	c := connector.Config{Name: "evil", URL: srv.URL, Username: "regwarm", Password: password, AuthHosts: authHosts, Concurrency: 1}
	u, err := connector.New(c, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// getBlob fetches the blob through u and returns its bytes.
func getBlob(t *testing.T, u *connector.Upstream) ([]byte, error) {
	t.Helper()
	rc, _, err := u.GetBlob(t.Context(), "app", digest.FromBytes(blob))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// wantNoSecret fails if any request carried credentials or the token.
func wantNoSecret(t *testing.T, what string, reqs []http.Header) {
	t.Helper()
	for _, h := range reqs {
		if a := h.Get("Authorization"); a != "" {
			t.Errorf("%s received Authorization %q", what, a)
		}
	}
}

// TestRealmOnOtherHostGetsNoPassword: a token realm on another host (here
// another port) named by the upstream gets the token request, but never
// the connector's password.
func TestRealmOnOtherHostGetsNoPassword(t *testing.T) {
	t.Parallel()
	realm := newCatcher(t, "127.0.0.1", false)
	srv := httptest.NewServer(&upstream{realm: realm.URL + "/token"})
	t.Cleanup(srv.Close)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	got, err := getBlob(t, connectorTo(t, srv, nil, connector.WithLogger(log)))
	if err != nil || string(got) != string(blob) {
		t.Fatalf("GetBlob = %q, %v; want the blob with an anonymous token", got, err)
	}
	reqs := realm.requests()
	if len(reqs) == 0 {
		t.Fatal("the realm was never asked for a token")
	}
	wantNoSecret(t, "a foreign realm", reqs)
	out := logs.String()
	if !strings.Contains(out, "auth_hosts") || !strings.Contains(out, realm.Listener.Addr().String()) {
		t.Errorf("no warning naming the realm and auth_hosts in the log:\n%s", out)
	}
	if strings.Contains(out, password) {
		t.Error("the log contains the password")
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestAuthHostsAllowsRealm: a realm listed in auth_hosts gets the
// connector's credentials.
func TestAuthHostsAllowsRealm(t *testing.T) {
	t.Parallel()
	realm := newCatcher(t, "127.0.0.1", false)
	srv := httptest.NewServer(&upstream{realm: realm.URL + "/token"})
	t.Cleanup(srv.Close)
	if _, err := getBlob(t, connectorTo(t, srv, []string{realm.Listener.Addr().String()})); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, h := range realm.requests() {
		req := &http.Request{Header: h}
		if user, pass, ok := req.BasicAuth(); ok && user == "regwarm" && pass == password {
			found = true
		}
	}
	if !found {
		t.Error("the realm named in auth_hosts did not get the credentials")
	}
}

// TestHTTPRealmRefusedForHTTPSConnector: an https connector never talks
// plain HTTP, so an http:// realm gets nothing.
func TestHTTPRealmRefusedForHTTPSConnector(t *testing.T) {
	t.Parallel()
	realm := newCatcher(t, "127.0.0.1", false)
	srv := httptest.NewTLSServer(&upstream{realm: realm.URL + "/token"})
	t.Cleanup(srv.Close)
	u := connectorTo(t, srv, []string{realm.Listener.Addr().String()}, connector.WithTransport(srv.Client().Transport))
	if _, err := getBlob(t, u); err == nil {
		t.Fatal("GetBlob succeeded through a plain-HTTP realm")
	}
	if n := len(realm.requests()); n != 0 {
		t.Errorf("the http realm received %d requests", n)
	}
}

// TestRedirectToPrivateRefused: a connector classified as public that
// redirects a blob to a loopback address is refused; the catcher there
// sees nothing.
func TestRedirectToPrivateRefused(t *testing.T) {
	t.Parallel()
	target := newCatcher(t, "127.0.0.2", false)
	realm := newCatcher(t, "127.0.0.1", false)
	srv := httptest.NewServer(&upstream{realm: realm.URL + "/token", redirect: target.URL + "/blob"})
	t.Cleanup(srv.Close)
	public := netip.MustParseAddr("127.0.0.1")
	classify := func(ip netip.Addr) bool { return ip != public && connector.PrivateAddr(ip) }
	_, err := getBlob(t, connectorTo(t, srv, nil, connector.WithAddressClassifier(classify)))
	if !errors.Is(err, connector.ErrRefused) {
		t.Errorf("GetBlob error %v, want %v", err, connector.ErrRefused)
	}
	if n := len(target.requests()); n != 0 {
		t.Errorf("the private address received %d requests", n)
	}
}

// TestCrossHostRedirectDropsAuthorization: a blob redirect to another host
// (a CDN; here another port of the same address) still works, without the
// upstream's token.
func TestCrossHostRedirectDropsAuthorization(t *testing.T) {
	t.Parallel()
	cdn := newCatcher(t, "127.0.0.1", false)
	realm := newCatcher(t, "127.0.0.1", false)
	srv := httptest.NewServer(&upstream{realm: realm.URL + "/token", redirect: cdn.URL + "/blob"})
	t.Cleanup(srv.Close)
	got, err := getBlob(t, connectorTo(t, srv, nil))
	if err != nil || string(got) != string(blob) {
		t.Fatalf("GetBlob = %q, %v; want the blob from the CDN", got, err)
	}
	if len(cdn.requests()) == 0 {
		t.Fatal("the CDN got no request")
	}
	wantNoSecret(t, "the CDN", cdn.requests())
}
