package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/regclient/regclient"
	rcconfig "github.com/regclient/regclient/config"
	"github.com/regclient/regclient/scheme/reg"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/errs"
	rcref "github.com/regclient/regclient/types/ref"

	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/ref"
)

// Upstream is a connector to a remote registry, built on regclient.
type Upstream struct {
	name   string
	host   string // host:port regclient addresses
	hub    bool   // Docker Hub: single-component names get "library/"
	filter Filter
	rc     *regclient.RegClient
	// retryUntil is the UnixNano time before which the upstream asked us
	// (Retry-After) not to come back; calls fail fast until then.
	retryUntil atomic.Int64
	// downUntil is the UnixNano time before which calls fail fast after the
	// upstream was unreachable (a short circuit breaker, so that stale
	// answers go out at once); failures counts consecutive failures.
	downUntil atomic.Int64
	failures  atomic.Int32
	refs      *referrersMemo // the upstream's referrers API, see referrers.go
}

// maxBreak caps how long the breaker keeps an unreachable upstream off.
const maxBreak = 5 * time.Second

var _ Source = (*Upstream)(nil)

// UpstreamOption configures an Upstream.
type UpstreamOption func(*upstreamOptions) error

type upstreamOptions struct {
	metrics   *metrics.Set
	log       *slog.Logger
	transport http.RoundTripper
	userAgent string
	private   func(netip.Addr) bool
}

// WithAddressClassifier replaces PrivateAddr, the test of whether an
// address is in a private range (tests place a connector and a catcher on
// loopback addresses and call only the catcher's private).
func WithAddressClassifier(private func(netip.Addr) bool) UpstreamOption {
	return func(o *upstreamOptions) error {
		if private == nil {
			return errors.New("connector: nil address classifier")
		}
		o.private = private
		return nil
	}
}

// WithMetrics records upstream metrics in m.
func WithMetrics(m *metrics.Set) UpstreamOption {
	return func(o *upstreamOptions) error {
		if m == nil {
			return errors.New("connector: nil metrics")
		}
		o.metrics = m
		return nil
	}
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) UpstreamOption {
	return func(o *upstreamOptions) error {
		if l == nil {
			return errors.New("connector: nil logger")
		}
		o.log = l
		return nil
	}
}

// WithTransport replaces the HTTP transport (tests, proxies). Credentials
// and schemes are still guarded; addresses are checked only by IP literal,
// since the dialer is the transport's.
func WithTransport(t http.RoundTripper) UpstreamOption {
	return func(o *upstreamOptions) error {
		if t == nil {
			return errors.New("connector: nil transport")
		}
		o.transport = t
		return nil
	}
}

// WithUserAgent sets the User-Agent sent upstream.
func WithUserAgent(ua string) UpstreamOption {
	return func(o *upstreamOptions) error { o.userAgent = ua; return nil }
}

// DefaultTransport is the transport upstream requests use: bounded dial,
// TLS and response-header times, so a dead or slow upstream fails fast.
func DefaultTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// Config is what an upstream connector needs to know.
type Config struct {
	Name        string // the connector's name, in logs, metrics and errors
	URL         string // http(s)://host[:port] of the upstream registry
	Host        string // the upstream host it serves, when not URL's
	Username    string // credentials for the upstream, with Password
	Password    string
	Filter      Filter   // which upstream repositories may be asked for
	Concurrency int      // requests at once; 0: 4
	AuthHosts   []string // other hosts that may receive the credentials
}

// New builds the upstream connector c (which must have a url).
func New(c Config, opts ...UpstreamOption) (*Upstream, error) {
	o := upstreamOptions{log: slog.New(slog.DiscardHandler), userAgent: "regwarm", private: PrivateAddr}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if o.metrics == nil {
		o.metrics = metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	}
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("connector %s: invalid url", c.Name)
	}
	hub := ref.IsDockerHub(u.Hostname()) || ref.IsDockerHub(c.Host)
	g := newGuard(u, hub, c.AuthHosts, o.private)
	g.log = o.log.With("connector", c.Name)
	if o.transport == nil {
		t := DefaultTransport()
		t.DialContext, t.Proxy = g.dialContext, g.proxy
		o.transport = t
	}
	g.next = o.transport
	up := &Upstream{
		name:   c.Name,
		host:   u.Host,
		hub:    hub,
		filter: c.Filter,
	}
	tls := rcconfig.TLSEnabled
	if u.Scheme == "http" {
		tls = rcconfig.TLSDisabled
	}
	conc := c.Concurrency
	if conc < 1 {
		conc = 4
	}
	host := rcconfig.Host{
		Name: u.Host, Hostname: u.Host, TLS: tls,
		User: c.Username, Pass: c.Password,
		ReqConcurrent: int64(conc),
		APIOpts:       map[string]string{},
	}
	obs := &observer{name: c.Name, next: g, metrics: o.metrics, backoff: up.setBackoff, log: o.log}
	up.refs = newReferrersMemo(u.Scheme+"://"+u.Host, obs, o.userAgent)
	up.rc = regclient.New(
		regclient.WithConfigHost(host),
		regclient.WithUserAgent(o.userAgent),
		regclient.WithSlog(o.log.With("connector", c.Name)),
		regclient.WithRegOpts(
			reg.WithHTTPClient(&http.Client{Transport: obs}),
			// One retry leaves room for the auth round trip; regwarm's
			// callers decide about retrying and stale answers themselves.
			reg.WithRetryLimit(1),
			// No sleeping inside regclient: an unreachable upstream is
			// handled by regwarm's breaker and stale answers.
			reg.WithDelay(time.Millisecond, time.Millisecond),
		),
	)
	return up, nil
}

// Name returns the connector name.
func (u *Upstream) Name() string { return u.name }

// Allowed reports whether repo passes the filters (matched against the
// upstream repository name, e.g. "library/alpine" on Docker Hub).
func (u *Upstream) Allowed(repo string) bool { return u.filter.Allowed(u.remote(repo)) }

// remote maps a local repository name to the upstream one.
func (u *Upstream) remote(repo string) string {
	if u.hub && !strings.Contains(repo, "/") {
		return "library/" + repo
	}
	return repo
}

func (u *Upstream) setBackoff(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		cur := u.retryUntil.Load()
		if cur >= until || u.retryUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// begin checks filters and backoff before a call.
func (u *Upstream) begin(ctx context.Context, kind Kind, repo string) (context.Context, *observation, error) {
	if !u.Allowed(repo) {
		return ctx, nil, &Error{Connector: u.name, Kind: kind, Excluded: true, Err: ErrExcluded}
	}
	if until := u.retryUntil.Load(); until > 0 {
		if wait := time.Until(time.Unix(0, until)); wait > 0 {
			return ctx, nil, &Error{Connector: u.name, Kind: kind, Status: http.StatusTooManyRequests,
				RetryAfter: wait, Temporary: true, Message: "waiting for Retry-After", Err: ErrRateLimit}
		}
	}
	if until := u.downUntil.Load(); until > 0 && time.Now().UnixNano() < until {
		return ctx, nil, &Error{Connector: u.name, Kind: kind, Temporary: true,
			Message: "upstream unreachable; not retried for a moment"}
	}
	ctx, o := withObservation(ctx)
	return ctx, o, nil
}

// settle updates the breaker from a call's outcome and returns err typed.
func (u *Upstream) settle(ctx context.Context, kind Kind, o *observation, err error) error {
	if err == nil {
		u.failures.Store(0)
		u.downUntil.Store(0)
		return nil
	}
	werr := u.wrap(ctx, kind, o, err)
	var e *Error
	if errors.As(werr, &e) && ctx.Err() == nil && !errors.Is(e.Err, ErrRefused) && (e.Status == 0 || e.Status == http.StatusBadGateway ||
		e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout) {
		n := u.failures.Add(1)
		d := min(250*time.Millisecond<<min(n-1, 8), maxBreak)
		u.downUntil.Store(time.Now().Add(d).UnixNano())
	}
	return werr
}

func (u *Upstream) ref(repo, reference string) rcref.Ref {
	r := rcref.Ref{Scheme: "reg", Registry: u.host, Repository: u.remote(repo)}
	if strings.Contains(reference, ":") {
		r.Digest = reference
	} else {
		r.Tag = reference
	}
	r.Reference = r.CommonName()
	return r
}

// wrap turns a regclient error into the connector's typed error.
func (u *Upstream) wrap(ctx context.Context, kind Kind, o *observation, err error) error {
	if err == nil {
		return nil
	}
	e := &Error{Connector: u.name, Kind: kind}
	if o != nil {
		e.Status, e.Codes, e.RetryAfter = o.get()
	}
	switch {
	case errors.Is(err, errs.ErrNotFound) && (e.Status == 0 || e.Status == http.StatusNotFound):
		e.Status, e.Err = http.StatusNotFound, ErrNotFound
	case errors.Is(err, ErrRefused):
		e.Err, e.Message = ErrRefused, capMessage(err.Error())
	case errors.Is(err, errs.ErrDigestMismatch), errors.Is(err, ErrMismatch):
		e.Err, e.Temporary = ErrMismatch, true
	case e.Status == http.StatusTooManyRequests:
		e.Err, e.Temporary = ErrRateLimit, true
	case e.Status == 0, e.Status == http.StatusRequestTimeout, e.Status >= 500:
		e.Temporary = true
	}
	if ctx.Err() != nil {
		e.Temporary = true
	}
	if e.Err == nil {
		e.Message = capMessage(err.Error())
	}
	return e
}

func capMessage(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// HeadManifest resolves reference with a HEAD request (it does not count
// against Docker Hub's pull quota).
func (u *Upstream) HeadManifest(ctx context.Context, repo, reference string) (ocispec.Descriptor, error) {
	ctx, o, err := u.begin(ctx, KindManifest, repo)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	m, err := u.rc.ManifestHead(ctx, u.ref(repo, reference), regclient.WithManifestRequireDigest())
	if err := u.settle(ctx, KindManifest, o, err); err != nil {
		return ocispec.Descriptor{}, err
	}
	d := m.GetDescriptor()
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}, nil
}

// GetManifest fetches a manifest and verifies its digest.
func (u *Upstream) GetManifest(ctx context.Context, repo, reference string) (Manifest, error) {
	ctx, o, err := u.begin(ctx, KindManifest, repo)
	if err != nil {
		return Manifest{}, err
	}
	m, err := u.rc.ManifestGet(ctx, u.ref(repo, reference))
	if err := u.settle(ctx, KindManifest, o, err); err != nil {
		return Manifest{}, err
	}
	raw, err := m.RawBody()
	if err != nil {
		return Manifest{}, u.wrap(ctx, KindManifest, o, err)
	}
	got, err := verifyManifest(raw, reference, m.GetDescriptor().Digest)
	if err != nil {
		return Manifest{}, &Error{Connector: u.name, Kind: KindManifest, Err: err, Temporary: true}
	}
	// The media type as served; the cache parses (and normalises) it.
	return Manifest{MediaType: m.GetDescriptor().MediaType, Digest: got, Data: raw}, nil
}

// verifyManifest computes the digest of raw with the algorithm of the
// reference (when it is a digest) or of the upstream's Docker-Content-Digest,
// and checks it against both.
func verifyManifest(raw []byte, reference string, header digest.Digest) (digest.Digest, error) {
	alg := digest.Canonical
	if want, err := digest.Parse(reference); err == nil {
		alg = want.Algorithm()
		if got := alg.FromBytes(raw); got != want {
			return "", fmt.Errorf("%w: got %s, want %s", ErrMismatch, got, want)
		}
		return want, nil
	}
	if header != "" && header.Validate() == nil {
		alg = header.Algorithm()
		if got := alg.FromBytes(raw); got != header {
			return "", fmt.Errorf("%w: body hashes to %s, upstream says %s", ErrMismatch, got, header)
		}
		return header, nil
	}
	return alg.FromBytes(raw), nil
}

// HeadBlob returns a blob's size.
func (u *Upstream) HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	ctx, o, err := u.begin(ctx, KindBlob, repo)
	if err != nil {
		return 0, err
	}
	r, err := u.rc.BlobHead(ctx, u.ref(repo, ""), descriptor.Descriptor{Digest: d})
	if err := u.settle(ctx, KindBlob, o, err); err != nil {
		return 0, err
	}
	size := r.GetDescriptor().Size
	_ = r.Close() // a HEAD answer has no body to lose
	return size, nil
}

// GetBlob opens a blob. The body streams from the upstream unverified; the
// caller verifies the digest while storing it.
func (u *Upstream) GetBlob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error) {
	ctx, o, err := u.begin(ctx, KindBlob, repo)
	if err != nil {
		return nil, 0, err
	}
	r, err := u.rc.BlobGet(ctx, u.ref(repo, ""), descriptor.Descriptor{Digest: d})
	if err := u.settle(ctx, KindBlob, o, err); err != nil {
		return nil, 0, err
	}
	size := r.GetDescriptor().Size
	if size <= 0 {
		o.mu.Lock()
		size = o.length
		o.mu.Unlock()
	}
	if size < 0 {
		size = -1
	}
	// Read the response body itself: the cache hashes while it stores, so
	// regclient's own hashing would only add a second pass on the pull path.
	var body io.Reader = r
	if resp := r.Response(); resp != nil && resp.Body != nil {
		body = resp.Body
	}
	return &blobReader{ReadCloser: readCloser{body, r}, u: u, ctx: ctx, o: o}, size, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// blobReader maps read errors to the typed error.
type blobReader struct {
	io.ReadCloser
	u   *Upstream
	ctx context.Context
	o   *observation
}

func (b *blobReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = b.u.wrap(b.ctx, KindBlob, b.o, err)
	}
	return n, err
}

// Tags lists the upstream repository's tags.
func (u *Upstream) Tags(ctx context.Context, repo string) ([]string, error) {
	ctx, o, err := u.begin(ctx, KindTags, repo)
	if err != nil {
		return nil, err
	}
	tl, err := u.rc.TagList(ctx, u.ref(repo, "latest"))
	if err := u.settle(ctx, KindTags, o, err); err != nil {
		return nil, err
	}
	tags, err := tl.GetTags()
	if err != nil {
		return nil, u.wrap(ctx, KindTags, o, err)
	}
	return tags, nil
}

// Referrers lists the upstream's referrers of d (the referrers API, or the
// tag-schema fallback for registries without it).
func (u *Upstream) Referrers(ctx context.Context, repo string, d digest.Digest) ([]ocispec.Descriptor, error) {
	ctx, o, err := u.begin(ctx, KindReferrers, repo)
	if err != nil {
		return nil, err
	}
	if list, ok := u.referrersMemoized(ctx, repo, d); ok {
		return list, nil
	}
	rl, err := u.rc.ReferrerList(ctx, u.ref(repo, d.String()))
	if err := u.settle(ctx, KindReferrers, o, err); err != nil {
		return nil, err
	}
	out := make([]ocispec.Descriptor, 0, len(rl.Descriptors))
	for _, x := range rl.Descriptors {
		out = append(out, ocispec.Descriptor{MediaType: x.MediaType, ArtifactType: x.ArtifactType,
			Digest: x.Digest, Size: x.Size, Annotations: x.Annotations})
	}
	return out, nil
}
