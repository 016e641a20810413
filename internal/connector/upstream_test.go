package connector_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/store"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

var (
	manifestBody   = []byte(`{"schemaVersion":2,"mediaType":"` + ociManifest + `","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	manifestDigest = digest.FromBytes(manifestBody)
	blobBody       = []byte("a blob of bytes")
	blobDigest     = digest.FromBytes(blobBody)
)

func manifestHeader(d digest.Digest, n int) http.Header {
	return http.Header{"Content-Type": {ociManifest}, "Docker-Content-Digest": {d.String()},
		"Content-Length": {strconv.Itoa(n)}}
}

func newUpstream(t *testing.T, s *script, mod func(*connector.Config)) *connector.Upstream {
	t.Helper()
	c := connector.Config{Name: "up", URL: s.url, Filter: connector.Filter{Exclude: []string{"secret/**"}}}
	if mod != nil {
		mod(&c)
	}
	u, err := connector.New(c)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// outcome is what a table case expects of a call's error.
type outcome struct {
	kind     fault.Kind // checked when err != nil
	ok       bool       // no error expected
	notFound bool       // connector.IsNotFound
	status   int        // the connector.Error's Status
	temp     bool       // connector.IsTemporary
}

func check(t *testing.T, name string, err error, want outcome) {
	t.Helper()
	if want.ok {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		return
	}
	if err == nil {
		t.Errorf("%s: no error", name)
		return
	}
	var ce *connector.Error
	if !errors.As(err, &ce) {
		t.Errorf("%s: %T is not a *connector.Error: %v", name, err, err)
		return
	}
	if got := fault.Of(err); got != want.kind {
		t.Errorf("%s: kind %v, want %v (%v)", name, got, want.kind, err)
	}
	if !errors.Is(err, want.kind) {
		t.Errorf("%s: errors.Is(err, %v) false", name, want.kind)
	}
	if connector.IsNotFound(err) != want.notFound {
		t.Errorf("%s: IsNotFound = %v, want %v", name, !want.notFound, want.notFound)
	}
	if ce.Status != want.status {
		t.Errorf("%s: status %d, want %d", name, ce.Status, want.status)
	}
	if connector.IsTemporary(err) != want.temp {
		t.Errorf("%s: IsTemporary = %v, want %v", name, !want.temp, want.temp)
	}
}

// TestUpstreamAnswers runs each call against a scripted upstream answering
// 200, 404, 401, 429 with Retry-After, 500 and a redirect.
func TestUpstreamAnswers(t *testing.T) {
	mpath := "/v2/app/manifests/v1"
	bpath := "/v2/app/blobs/" + blobDigest.String()
	tpath := "/v2/app/tags/list"
	errBody := []byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}`)
	for _, tt := range []struct {
		name   string
		steps  []exchange
		call   func(context.Context, *connector.Upstream) error
		want   outcome
		method string // the request whose count is checked
		path   string
		sent   int // how many times it was sent
	}{
		{
			name:  "manifest 200",
			steps: []exchange{{method: "GET", path: mpath, header: manifestHeader(manifestDigest, len(manifestBody)), body: manifestBody}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				m, err := u.GetManifest(ctx, "app", "v1")
				if err == nil && (m.Digest != manifestDigest || string(m.Data) != string(manifestBody) || m.MediaType != ociManifest) {
					return errors.New("wrong manifest")
				}
				return err
			},
			want: outcome{ok: true}, method: "GET", path: mpath, sent: 1,
		},
		{
			name:  "manifest 200 not matching its digest",
			steps: []exchange{{method: "GET", path: mpath, header: manifestHeader(blobDigest, len(manifestBody)), body: manifestBody}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "app", "v1")
				if err != nil && !errors.Is(err, connector.ErrMismatch) {
					return errors.New("not ErrMismatch: " + err.Error())
				}
				return err
			},
			want: outcome{kind: fault.Unavailable, status: 200, temp: true}, method: "GET", path: mpath, sent: 1,
		},
		{
			name:  "manifest 404",
			steps: []exchange{{method: "GET", path: mpath, status: 404, header: http.Header{"Content-Type": {"application/json"}}, body: errBody}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "app", "v1")
				return err
			},
			want: outcome{kind: fault.NotFound, notFound: true, status: 404}, method: "GET", path: mpath, sent: 1,
		},
		{
			name:  "manifest 401",
			steps: []exchange{{method: "GET", path: mpath, status: 401}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "app", "v1")
				return err
			},
			want: outcome{kind: fault.Denied, status: 401}, method: "GET", path: mpath, sent: 1,
		},
		{
			name:  "manifest 429 with Retry-After, then no request until it passes",
			steps: []exchange{{method: "GET", path: mpath, status: 429, header: http.Header{"Retry-After": {"30"}}}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "app", "v1")
				if d := fault.RetryAfter(err); d < 29*time.Second || d > 30*time.Second {
					return errors.New("Retry-After not carried: " + d.String())
				}
				_, err2 := u.GetManifest(ctx, "app", "v1") // fails fast: the upstream asked us to wait
				if fault.Of(err2) != fault.RateLimited || fault.RetryAfter(err2) <= 0 {
					return errors.New("second call not rate limited: " + err2.Error())
				}
				return err
			},
			want: outcome{kind: fault.RateLimited, status: 429, temp: true}, method: "GET", path: mpath, sent: 1,
		},
		{
			name:  "manifest 500",
			steps: []exchange{{method: "GET", path: mpath, status: 500, body: []byte("internal trouble")}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "app", "v1")
				return err
			},
			want: outcome{kind: fault.Unavailable, status: 500, temp: true}, method: "GET", path: mpath, sent: 1,
		},
		{
			name: "manifest 503 is not retried inside the call (callers nak or serve stale)",
			steps: []exchange{
				{method: "GET", path: mpath, status: 503, uses: 1},
				{method: "GET", path: mpath, header: manifestHeader(manifestDigest, len(manifestBody)), body: manifestBody},
			},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "app", "v1")
				return err
			},
			want: outcome{kind: fault.Unavailable, status: 503, temp: true}, method: "GET", path: mpath, sent: 1,
		},
		{
			name:  "manifest 502 opens the breaker: the next call sends nothing",
			steps: []exchange{{method: "GET", path: mpath, status: 502}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "app", "v1")
				_, err2 := u.GetManifest(ctx, "app", "v1")
				if fault.Of(err2) != fault.Unavailable || !connector.IsTemporary(err2) {
					return errors.New("second call not unavailable")
				}
				return err
			},
			want: outcome{kind: fault.Unavailable, status: 502, temp: true}, method: "GET", path: mpath, sent: 1,
		},
		{
			name:  "manifest HEAD 200",
			steps: []exchange{{method: "HEAD", path: mpath, header: manifestHeader(manifestDigest, len(manifestBody))}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				d, err := u.HeadManifest(ctx, "app", "v1")
				if err == nil && (d.Digest != manifestDigest || d.Size != int64(len(manifestBody))) {
					return errors.New("wrong descriptor")
				}
				return err
			},
			want: outcome{ok: true}, method: "HEAD", path: mpath, sent: 1,
		},
		{
			name:  "manifest HEAD 404",
			steps: []exchange{{method: "HEAD", path: mpath, status: 404}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.HeadManifest(ctx, "app", "v1")
				return err
			},
			want: outcome{kind: fault.NotFound, notFound: true, status: 404}, method: "HEAD", path: mpath, sent: 1,
		},
		{
			name:  "blob HEAD 200",
			steps: []exchange{{method: "HEAD", path: bpath, header: http.Header{"Content-Length": {strconv.Itoa(len(blobBody))}}}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				n, err := u.HeadBlob(ctx, "app", blobDigest)
				if err == nil && n != int64(len(blobBody)) {
					return errors.New("wrong size")
				}
				return err
			},
			want: outcome{ok: true}, method: "HEAD", path: bpath, sent: 1,
		},
		{
			name:  "blob GET 404",
			steps: []exchange{{method: "GET", path: bpath, status: 404}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, _, err := u.GetBlob(ctx, "app", blobDigest)
				return err
			},
			want: outcome{kind: fault.NotFound, notFound: true, status: 404}, method: "GET", path: bpath, sent: 1,
		},
		{
			name: "blob GET redirected",
			steps: []exchange{
				{method: "GET", path: bpath, status: http.StatusTemporaryRedirect, header: http.Header{"Location": {"/storage/blob"}}},
				{method: "GET", path: "/storage/blob", header: http.Header{"Content-Length": {strconv.Itoa(len(blobBody))}}, body: blobBody},
			},
			call: func(ctx context.Context, u *connector.Upstream) error {
				rc, size, err := u.GetBlob(ctx, "app", blobDigest)
				if err != nil {
					return err
				}
				defer rc.Close()
				b, err := io.ReadAll(rc)
				if err == nil && (string(b) != string(blobBody) || size != int64(len(blobBody))) {
					return errors.New("wrong blob")
				}
				return err
			},
			want: outcome{ok: true}, method: "GET", path: "/storage/blob", sent: 1,
		},
		{
			name:  "tag list 200",
			steps: []exchange{{method: "GET", path: tpath, header: http.Header{"Content-Type": {"application/json"}}, body: []byte(`{"name":"app","tags":["v1","v2"]}`)}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				tags, err := u.Tags(ctx, "app")
				if err == nil && strings.Join(tags, ",") != "v1,v2" {
					return errors.New("wrong tags: " + strings.Join(tags, ","))
				}
				return err
			},
			want: outcome{ok: true}, method: "GET", path: tpath, sent: 1,
		},
		{
			name:  "tag list 404",
			steps: []exchange{{method: "GET", path: tpath, status: 404, body: []byte(`{"errors":[{"code":"NAME_UNKNOWN"}]}`)}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.Tags(ctx, "app")
				return err
			},
			want: outcome{kind: fault.NotFound, notFound: true, status: 404}, method: "GET", path: tpath, sent: 1,
		},
		{
			name: "blob HEAD 429 with an HTTP-date Retry-After",
			steps: []exchange{{method: "HEAD", path: bpath, status: 429,
				header: http.Header{"Retry-After": {time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)}}}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.HeadBlob(ctx, "app", blobDigest)
				if d := fault.RetryAfter(err); d < 60*time.Second || d > 91*time.Second {
					return errors.New("Retry-After not carried: " + d.String())
				}
				return err
			},
			want: outcome{kind: fault.RateLimited, status: 429, temp: true}, method: "HEAD", path: bpath, sent: 1,
		},
		{
			name:  "blob GET 500",
			steps: []exchange{{method: "GET", path: bpath, status: 500}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, _, err := u.GetBlob(ctx, "app", blobDigest)
				return err
			},
			want: outcome{kind: fault.Unavailable, status: 500, temp: true}, method: "GET", path: bpath, sent: 1,
		},
		{
			name:  "tag list 401",
			steps: []exchange{{method: "GET", path: tpath, status: 401}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.Tags(ctx, "app")
				return err
			},
			want: outcome{kind: fault.Denied, status: 401}, method: "GET", path: tpath, sent: 1,
		},
		{
			name:  "tag list 403",
			steps: []exchange{{method: "GET", path: tpath, status: 403, body: []byte(`{"errors":[{"code":"DENIED"}]}`)}},
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.Tags(ctx, "app")
				var ce *connector.Error
				if errors.As(err, &ce) && (len(ce.Codes) != 1 || ce.Codes[0] != "DENIED") {
					return errors.New("OCI codes not read: " + err.Error())
				}
				return err
			},
			want: outcome{kind: fault.Denied, status: 403}, method: "GET", path: tpath, sent: 1,
		},
		{
			name: "excluded repository: no request at all",
			call: func(ctx context.Context, u *connector.Upstream) error {
				_, err := u.GetManifest(ctx, "secret/app", "v1")
				if err != nil && (!errors.Is(err, store.ErrNameUnknown) || !errors.Is(err, connector.ErrExcluded)) {
					return errors.New("not NAME_UNKNOWN: " + err.Error())
				}
				return err
			},
			want: outcome{kind: fault.NotFound, notFound: true}, method: "GET", path: "/v2/secret/app/manifests/v1", sent: 0,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newScript(t, tt.steps...)
			u := newUpstream(t, s, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			check(t, tt.name, tt.call(ctx, u), tt.want)
			if n := s.count(tt.method, tt.path); n != tt.sent {
				t.Errorf("%s %s sent %d times, want %d (requests: %v)", tt.method, tt.path, n, tt.sent, s.requests())
			}
		})
	}
}

// TestUpstreamErrorHasNoCredentials: a refused login never puts the
// password into the error.
func TestUpstreamErrorHasNoCredentials(t *testing.T) {
	const pass = "h8-s3cret-pass"
	s := newScript(t, exchange{method: "GET", path: "/v2/app/manifests/v1", status: 401,
		header: http.Header{"Www-Authenticate": {`Basic realm="test"`}},
		body:   []byte(`{"errors":[{"code":"UNAUTHORIZED","message":"` + pass + `"}]}`)})
	u := newUpstream(t, s, func(c *connector.Config) {
		c.Username, c.Password = "user", pass
	})
	_, err := u.GetManifest(context.Background(), "app", "v1")
	check(t, "401 with credentials", err, outcome{kind: fault.Denied, status: 401})
	if err != nil && strings.Contains(err.Error(), pass) {
		t.Errorf("error carries the password: %v", err)
	}
}
