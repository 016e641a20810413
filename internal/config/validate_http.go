package config

import (
	"net/url"
	"time"
)

// serveLimits checks serve.external_url and the API listener's limits.
func (v *validator) serveLimits() {
	s := v.c.Serve
	if s.ExternalURL != "" {
		if msg := checkBaseURL(s.ExternalURL); msg != "" {
			v.add("serve.external_url", s.ExternalURL, "%s", msg)
		}
	}
	if s.MaxConnections < 1 {
		v.add("serve.max_connections", s.MaxConnections, "must be at least 1")
	}
	if s.MaxConnectionsPerClient < 1 || s.MaxConnectionsPerClient > s.MaxConnections {
		v.add("serve.max_connections_per_client", s.MaxConnectionsPerClient, "must be between 1 and serve.max_connections")
	}
	if s.HeaderTimeout.D() < time.Second {
		v.add("serve.header_timeout", s.HeaderTimeout.String(), "must be at least 1s")
	}
	if s.BodyIdleTimeout.D() < time.Second {
		v.add("serve.body_idle_timeout", s.BodyIdleTimeout.String(), "must be at least 1s")
	}
}

// checkBaseURL checks a scheme://host[:port] URL without path, query,
// fragment or user info; it returns what is wrong, or "".
func checkBaseURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "must start with http:// or https://"
	case u.Host == "" || u.Hostname() == "":
		return "must name a host: scheme://host[:port]"
	case u.User != nil:
		return "must not contain user info"
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "", u.ForceQuery:
		return "must be scheme://host[:port] without a path, query or fragment"
	}
	return ""
}

// authExtra checks auth.throttle, auth.token and auth.external.
func (v *validator) authExtra() {
	a := v.c.Auth
	if a == nil {
		return
	}
	t := a.Throttle
	if t.MaxFailures < 1 {
		v.add("auth.throttle.max_failures", t.MaxFailures, "must be at least 1")
	}
	if t.MaxFailuresPerClient < t.MaxFailures {
		v.add("auth.throttle.max_failures_per_client", t.MaxFailuresPerClient, "must be at least auth.throttle.max_failures")
	}
	if t.Window.D() < time.Second {
		v.add("auth.throttle.window", t.Window.String(), "must be at least 1s")
	}
	if t.MaxEntries < 100 {
		v.add("auth.throttle.max_entries", t.MaxEntries, "must be at least 100")
	}
	if a.Token.TTL.D() < 10*time.Second || a.Token.TTL.D() > 24*time.Hour {
		v.add("auth.token.ttl", a.Token.TTL.String(), "must be between 10s and 24h")
	}
	if a.Token.KeyFile == "" {
		v.add("auth.token.key_file", nil, "required")
	}
	if e := a.External; e != nil {
		if u, err := url.Parse(e.Realm); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.add("auth.external.realm", e.Realm, "must be an http:// or https:// URL")
		}
		if e.Service == "" {
			v.add("auth.external.service", nil, "required")
		}
		if e.Issuer == "" {
			v.add("auth.external.issuer", nil, "required")
		}
		if e.RootCertBundle == "" {
			v.add("auth.external.rootcert_bundle", nil, "required")
		}
	}
}
