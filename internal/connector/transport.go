package connector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regwarm/regwarm/internal/metrics"
)

// maxErrorBody caps how much of an upstream error body is read.
const maxErrorBody = 64 << 10

// observation records what the upstream answered to one logical call
// (which may span several HTTP requests: auth, redirects, retries).
type observation struct {
	mu         sync.Mutex
	status     int
	codes      []string
	retryAfter time.Duration
	length     int64
}

func (o *observation) get() (status int, codes []string, retryAfter time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.status, o.codes, o.retryAfter
}

type obsKey struct{}

func withObservation(ctx context.Context) (context.Context, *observation) {
	o := &observation{length: -1}
	return context.WithValue(ctx, obsKey{}, o), o
}

// observer is the RoundTripper under regclient: it counts requests, bytes
// and status codes, reads rate-limit headers, and keeps what each call saw.
type observer struct {
	name    string
	next    http.RoundTripper
	metrics *metrics.Set
	// backoff is told about Retry-After on 429 and 503 answers.
	backoff func(time.Duration)
	// log, when set, hears about answers that do not look like a
	// registry's; lastOdd (unix nanoseconds) rate-limits that warning.
	log     *slog.Logger
	lastOdd atomic.Int64
}

// oddEvery is how often at most a connector warns that its URL answers
// like something other than a registry.
const oddEvery = 10 * time.Minute

// notRegistry warns, at most every oddEvery, that a GET answered 404
// without an OCI error body: what a web server or a URL with a wrong path
// does, and what a registry never does. Clients see only "manifest
// unknown" or "blob unknown" for it.
func (t *observer) notRegistry(req *http.Request, resp *http.Response) {
	now := time.Now().UnixNano()
	last := t.lastOdd.Load()
	if t.log == nil || (last != 0 && now-last < int64(oddEvery)) || !t.lastOdd.CompareAndSwap(last, now) {
		return
	}
	t.log.Warn("upstream answered 404 without an OCI error body: is the connector url a registry? (try regwarm config check --probe)",
		"connector", t.name, "path", req.URL.Path, "content_type", resp.Header.Get("Content-Type"))
}

func (t *observer) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	o, _ := req.Context().Value(obsKey{}).(*observation)
	if err != nil {
		t.metrics.UpstreamRequests.WithLabelValues(t.name, "error").Inc()
		return nil, err
	}
	t.metrics.UpstreamRequests.WithLabelValues(t.name, strconv.Itoa(resp.StatusCode)).Inc()
	t.metrics.UpstreamDuration.WithLabelValues(t.name).Observe(time.Since(start).Seconds())
	if rem, ok := rateLimitRemaining(resp.Header); ok {
		t.metrics.UpstreamRateLimit.WithLabelValues(t.name).Set(float64(rem))
	}
	var ra time.Duration
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		ra = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		if ra > 0 && t.backoff != nil {
			t.backoff(ra)
		}
	}
	if resp.StatusCode == http.StatusTooManyRequests || ra > 0 {
		// Answer regclient with an error so it does not sleep out the
		// Retry-After inside the call; regwarm's callers decide what to do.
		_ = resp.Body.Close()
		if o != nil {
			o.mu.Lock()
			o.status, o.codes, o.retryAfter = resp.StatusCode, nil, ra
			o.mu.Unlock()
		}
		return nil, fmt.Errorf("%w: status %d", ErrRateLimit, resp.StatusCode)
	}
	var codes []string
	if resp.StatusCode >= 400 && resp.StatusCode != http.StatusUnauthorized {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		_ = resp.Body.Close()
		codes = errorCodes(b)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		// A registry without the referrers API answers its path with a plain 404.
		if resp.StatusCode == http.StatusNotFound && req.Method == http.MethodGet && len(codes) == 0 &&
			!strings.Contains(req.URL.Path, "/referrers/") {
			t.notRegistry(req, resp)
		}
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, add: t.metrics.UpstreamBytes.WithLabelValues(t.name).Add}
	if o != nil {
		o.mu.Lock()
		o.status, o.codes, o.retryAfter = resp.StatusCode, codes, ra
		if resp.StatusCode < 300 {
			o.length = resp.ContentLength
		}
		o.mu.Unlock()
	}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	add func(float64)
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.add(float64(n))
	}
	return n, err
}

// errorCodes extracts OCI error codes from an error body.
func errorCodes(b []byte) []string {
	var body struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &body) != nil {
		return nil
	}
	var out []string
	for _, e := range body.Errors {
		if e.Code != "" && len(e.Code) < 64 {
			out = append(out, e.Code)
		}
	}
	return out
}

// retryAfter parses a Retry-After value (seconds or an HTTP date), capped
// at one hour.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.Atoi(v); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	if d < 0 {
		return 0
	}
	return min(d, time.Hour)
}

// rateLimitRemaining reads RateLimit-Remaining style headers: Docker Hub's
// "ratelimit-remaining: 76;w=21600", the IETF draft's plain number, and
// X-RateLimit-Remaining.
func rateLimitRemaining(h http.Header) (int64, bool) {
	for _, k := range []string{"RateLimit-Remaining", "X-RateLimit-Remaining"} {
		v := h.Get(k)
		if v == "" {
			continue
		}
		v, _, _ = strings.Cut(v, ";")
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			return n, true
		}
	}
	return 0, false
}
