package connector

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Probe asks the registry at url for its API root, GET /v2/, and returns
// nil when the answer is a registry's: 200 or 401 with an
// OCI/Docker-Distribution header or a WWW-Authenticate challenge. A URL
// that is not a registry (a web server, a wrong path) fails here, where
// through a connector it would only ever answer "manifest unknown". It
// sends no credentials and follows no redirect to another host.
func Probe(ctx context.Context, url string, rt http.RoundTripper) error {
	if rt == nil {
		rt = DefaultTransport()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	target := strings.TrimSuffix(url, "/") + "/v2/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	client := &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	api := resp.Header.Get("Docker-Distribution-Api-Version") != "" ||
		strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json")
	switch resp.StatusCode {
	case http.StatusOK:
		if api {
			return nil
		}
	case http.StatusUnauthorized:
		if api || resp.Header.Get("WWW-Authenticate") != "" {
			return nil
		}
	}
	return fmt.Errorf("GET %s answered %d (%s), not a registry's API root: is the URL a registry, without a path?",
		target, resp.StatusCode, resp.Header.Get("Content-Type"))
}
