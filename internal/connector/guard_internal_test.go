package connector

import (
	"errors"
	"net"
	"net/url"
	"testing"
)

// TestGuardDialChecksResolvedAddress: the check is on the address actually
// dialed, so a host name that resolves to loopback (a DNS trick) is
// refused for a public connector, and allowed for a connector on that host.
func TestGuardDialChecksResolvedAddress(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	public := newGuard(&url.URL{Scheme: "https", Host: "registry.example"}, false, nil, PrivateAddr)
	if _, err := public.dialContext(t.Context(), "tcp", "localhost:"+port); !errors.Is(err, ErrRefused) {
		t.Errorf("public connector dialing localhost: %v, want %v", err, ErrRefused)
	}
	local := newGuard(&url.URL{Scheme: "http", Host: "localhost:" + port}, false, nil, PrivateAddr)
	conn, err := local.dialContext(t.Context(), "tcp", "localhost:"+port)
	if err != nil {
		t.Fatalf("connector on localhost dialing itself: %v", err)
	}
	conn.Close()
}

// TestGuardCredentialHosts: the connector's own host:port, its auth_hosts
// (a bare host matches any port) and Docker Hub's known realm.
func TestGuardCredentialHosts(t *testing.T) {
	t.Parallel()
	g := newGuard(&url.URL{Scheme: "https", Host: "Registry.Example"}, false, []string{"auth.example", "token.example:8443"}, PrivateAddr)
	hub := newGuard(&url.URL{Scheme: "https", Host: "registry-1.docker.io"}, true, nil, PrivateAddr)
	tests := []struct {
		g    *guard
		url  string
		want bool
	}{
		{g, "https://registry.example/v2/", true},
		{g, "https://registry.example:443/v2/", true},
		{g, "https://registry.example:8443/v2/", false},
		{g, "https://auth.example:9999/token", true},
		{g, "https://token.example:8443/token", true},
		{g, "https://token.example/token", false},
		{g, "https://cdn.example/blob", false},
		{hub, "https://auth.docker.io/token", true},
		{hub, "https://production.cloudflare.docker.com/blob", false},
	}
	for _, tc := range tests {
		u, _ := url.Parse(tc.url)
		if got := tc.g.credentialsAllowed(u); got != tc.want {
			t.Errorf("credentialsAllowed(%s) = %v, want %v", tc.url, got, tc.want)
		}
	}
}
