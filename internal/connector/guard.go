package connector

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/regwarm/regwarm/internal/ref"
)

// knownAuthHosts are the token realms of well-known registries (by
// canonical host), allowed to receive the credentials of a connector to
// that registry.
var knownAuthHosts = map[string][]string{
	ref.DockerHub: {"auth.docker.io"},
}

// PrivateAddr reports whether ip is in a range an upstream must not send
// regwarm to: loopback, private, link-local, unique-local, CGNAT,
// unspecified or multicast.
func PrivateAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || cgnat.Contains(ip)
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// guard is the RoundTripper under the observer that keeps a connector's
// credentials and requests where they belong:
//   - the Authorization header goes only to the connector's own host
//     (host:port) and its auth hosts, so a token realm or redirect target
//     named by the upstream never sees the password or the token;
//   - an https connector makes no plain-HTTP request at all;
//   - a request into a private range (by IP literal here, by the dialed
//     address in dialContext) is refused unless the connector itself lives
//     in one.
type guard struct {
	next      http.RoundTripper
	host      string // connector host:port, lower case, port explicit
	hostname  string // connector host name, lower case
	https     bool
	authHosts []string // host (any port) or host:port, lower case
	private   func(netip.Addr) bool
	// ownPrivate is set once the connector's own host is seen at a private
	// address (or is one literally): it lives there, so its redirects may
	// stay there.
	ownPrivate atomic.Bool
	proxies    sync.Map // host names of proxies the transport used
	log        *slog.Logger
	warned     sync.Map // hosts whose withheld credentials were logged
}

func newGuard(u *url.URL, hub bool, authHosts []string, private func(netip.Addr) bool) *guard {
	g := &guard{
		log:      slog.New(slog.DiscardHandler),
		host:     hostPort(u),
		hostname: strings.ToLower(u.Hostname()),
		https:    u.Scheme == "https",
		private:  private,
	}
	for _, h := range authHosts {
		g.authHosts = append(g.authHosts, strings.ToLower(h))
	}
	if hub {
		g.authHosts = append(g.authHosts, "auth.docker.io")
	}
	g.authHosts = append(g.authHosts, knownAuthHosts[canonicalHost(g.hostname)]...)
	if ip, err := netip.ParseAddr(strings.Trim(g.hostname, "[]")); (err == nil && private(ip)) || g.hostname == "localhost" {
		g.ownPrivate.Store(true)
	}
	return g
}

// hostPort returns u's host:port in lower case with the scheme's default
// port made explicit.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// credentialsAllowed reports whether u may receive the connector's
// Authorization header.
func (g *guard) credentialsAllowed(u *url.URL) bool {
	hp := hostPort(u)
	if hp == g.host {
		return true
	}
	name := strings.ToLower(u.Hostname())
	return slices.ContainsFunc(g.authHosts, func(h string) bool { return h == hp || h == name })
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if g.https && req.URL.Scheme != "https" {
		return nil, fmt.Errorf("%w: plain http to %s from an https connector", ErrRefused, req.URL.Host)
	}
	own := hostPort(req.URL) == g.host
	if ip, err := netip.ParseAddr(strings.Trim(req.URL.Hostname(), "[]")); err == nil && !own && g.private(ip) && !g.ownPrivate.Load() {
		return nil, fmt.Errorf("%w: %s is a private address", ErrRefused, req.URL.Host)
	}
	if a := req.Header.Get("Authorization"); a != "" && !g.credentialsAllowed(req.URL) {
		if _, _, basic := req.BasicAuth(); basic {
			if _, seen := g.warned.LoadOrStore(req.URL.Host, true); !seen {
				g.log.Warn("connector credentials withheld from a host outside the connector; list it in auth_hosts if it is the upstream's token service",
					"host", req.URL.Host)
			}
		}
		req = req.Clone(req.Context())
		req.Header.Del("Authorization")
	}
	return g.next.RoundTrip(req)
}

// proxy is the transport's Proxy function: the environment's, with each
// proxy recorded so that dialing it is not taken for a redirect.
func (g *guard) proxy(req *http.Request) (*url.URL, error) {
	u, err := http.ProxyFromEnvironment(req)
	if u != nil {
		g.proxies.Store(strings.ToLower(u.Hostname()), true)
	}
	return u, err
}

// dialContext dials addr and refuses, by the address actually dialed (so
// DNS answers cannot sneak past), a private address for any host but the
// connector's own and the proxies.
func (g *guard) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	host = strings.ToLower(host)
	_, viaProxy := g.proxies.Load(host)
	own := host == strings.Trim(g.hostname, "[]")
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	d.Control = func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !g.private(ap.Addr()) {
			return err
		}
		switch {
		case own:
			g.ownPrivate.Store(true)
			return nil
		case viaProxy, g.ownPrivate.Load():
			return nil
		}
		return fmt.Errorf("%w: %s resolves to %s, a private address", ErrRefused, host, ap.Addr())
	}
	return d.DialContext(ctx, network, addr)
}

// canonicalHost folds Docker Hub's aliases into ref.DockerHub.
func canonicalHost(host string) string {
	if ref.IsDockerHub(host) {
		return ref.DockerHub
	}
	return host
}
