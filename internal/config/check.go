package config

import (
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/regwarm/regwarm/internal/ref"
)

// platformRE matches os/arch[/variant].
var platformRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)?$`)

// checkListen returns what is wrong with a listen address, or "".
func checkListen(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "must be host:port (host may be empty, like :5000)"
	}
	if !validPort(port, true) {
		return "port must be a number from 0 to 65535"
	}
	if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		return "host must be an IP address or a host name"
	}
	return ""
}

// loopbackListen reports whether a listen address (already checked) only
// accepts local clients: localhost or a loopback IP; an empty host means
// every interface.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true // reported by checkListen
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkHost returns what is wrong with a connector host, which is how
// clients name the upstream: hostname[:port], without scheme or path.
func checkHost(h string) string {
	if strings.Contains(h, "://") {
		return "must be a host name without scheme, like docker.io"
	}
	if strings.ContainsAny(h, "/?#@") {
		return "must be hostname[:port] without path or credentials"
	}
	host := h
	if strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1 {
		var port string
		var err error
		host, port, err = net.SplitHostPort(h)
		if err != nil {
			if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
				host, port = h[1:len(h)-1], "443"
			} else {
				return "must be hostname[:port]"
			}
		}
		if !validPort(port, false) {
			return "port must be a number from 1 to 65535"
		}
		if strings.HasPrefix(h, "[") {
			if net.ParseIP(host) == nil {
				return "not a valid IPv6 address"
			}
			return ""
		}
	}
	if net.ParseIP(host) == nil && !validHostname(host) {
		return "must be hostname[:port]"
	}
	return ""
}

func validPort(port string, zero bool) bool {
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && (zero || n > 0)
}

// validHostname reports whether h is a DNS name: dot-separated labels of
// letters, digits and inner hyphens.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// checkUpstreamURL returns what is wrong with a connector url, or "".
func checkUpstreamURL(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "not a valid URL"
	case u.User != nil:
		return "must not contain credentials; use username with password_env or password_file"
	case u.Scheme != "http" && u.Scheme != "https":
		return "scheme must be http or https"
	case u.Host == "":
		return "needs a host"
	case u.RawQuery != "" || u.Fragment != "":
		return "must not have a query or fragment"
	}
	if msg := checkHost(u.Host); msg != "" {
		return "host " + msg
	}
	return ""
}

// checkNATSURL returns what is wrong with one NATS server URL, or "".
func checkNATSURL(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return "empty URL in the list"
	case err != nil:
		return "not a valid URL"
	case !slices.Contains(natsSchemes, u.Scheme):
		return "scheme must be one of " + strings.Join(natsSchemes, ", ")
	case u.Host == "":
		return "needs a host"
	}
	return ""
}

// redactURL hides the userinfo of a URL, parseable or not, so that a
// password never reaches a log or an error message.
func redactURL(raw string) string {
	prefix, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		prefix, rest = raw[:i+3], raw[i+3:]
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		return prefix + "xxxxx" + rest[at:]
	}
	return raw
}

// redactURLs applies redactURL to each URL of a comma-separated list.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = redactURL(p)
	}
	return strings.Join(parts, ",")
}

// checkSubjectPrefix returns what is wrong with a NATS subject prefix.
func checkSubjectPrefix(p string) string {
	if p == "" {
		return "required"
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return "must be dot-separated NATS subject tokens without wildcards or spaces"
		}
	}
	return ""
}

// ParseRefreshImage splits a jobs.refresh image, <registry>/<repo>:<tag or
// glob>; problem says what is wrong with it, "" when nothing is.
func ParseRefreshImage(img string) (registry, repo, pattern, problem string) {
	const form = "must be <registry>/<repo>:<tag-or-glob>"
	reg, rest, ok := strings.Cut(img, "/")
	if !ok || reg == "" || strings.Contains(img, "@") {
		return "", "", "", form
	}
	i := strings.LastIndex(rest, ":")
	if i < 0 {
		return "", "", "", form + " (the tag is missing)"
	}
	repo, tag := rest[:i], rest[i+1:]
	if ref.ValidName(repo) != nil {
		return "", "", "", "repository " + strconv.Quote(repo) + " is not a valid name"
	}
	if strings.ContainsAny(tag, "*?[") {
		if _, err := path.Match(tag, "x"); err != nil {
			return "", "", "", "tag pattern " + strconv.Quote(tag) + " is not a valid glob"
		}
	} else if ref.ValidTag(tag) != nil {
		return "", "", "", "tag " + strconv.Quote(tag) + " is not valid"
	}
	return reg, repo, tag, ""
}
