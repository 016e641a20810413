package connector

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/regclient/regclient/types/referrer"
)

// Referrers of an upstream without the referrers API (distribution 2.x and
// many others) live under tags of the form sha256-<hex>. Asking for that
// tag for every manifest of every sync costs one request per manifest, so
// each connector remembers for referrersTTL whether its upstream has the
// API, and without it lists each repository's tags once per
// fallbackTagsTTL and asks only for the fallback tags that exist.
const (
	referrersTTL    = 5 * time.Minute
	fallbackTagsTTL = 30 * time.Second
	// fallbackReposMax bounds the remembered tag lists (cleared when full),
	// fallbackTagsMax the fallback tags remembered per repository (more:
	// not remembered, each manifest's fallback tag is asked as before).
	fallbackReposMax = 256
	fallbackTagsMax  = 10_000
	// probeBodyMax caps a referrers API answer read by the probe.
	probeBodyMax = 4 << 20
)

// apiState is what a connector knows about its upstream's referrers API.
type apiState int

const (
	apiUnknown apiState = iota // not asked, or the memo expired
	apiPresent                 // answers 200 (or could not tell: regclient decides)
	apiAbsent                  // answers 404 for a manifest the upstream has
)

// referrersMemo is one connector's memory of its upstream's referrers API
// and, without one, of each repository's fallback tags.
type referrersMemo struct {
	base   string // scheme://host of the upstream
	client *http.Client
	ua     string

	mu    sync.Mutex
	state apiState
	until time.Time
	tags  map[string]fallbackTags // remote repository → its sha256-… tags
}

type fallbackTags struct {
	set   map[string]bool // nil: too many to remember
	until time.Time
}

func newReferrersMemo(base string, rt http.RoundTripper, userAgent string) *referrersMemo {
	return &referrersMemo{base: base, ua: userAgent, client: &http.Client{Transport: rt, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (m *referrersMemo) get(now time.Time) apiState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if now.After(m.until) {
		return apiUnknown
	}
	return m.state
}

func (m *referrersMemo) set(s apiState, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state, m.until = s, now.Add(referrersTTL)
}

// fallbackTags returns repo's remembered sha256-… tags (nil: too many),
// if still fresh.
func (m *referrersMemo) fallbackTags(repo string, now time.Time) (map[string]bool, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ft, ok := m.tags[repo]
	if !ok || now.After(ft.until) {
		return nil, false
	}
	return ft.set, true
}

// keepTags remembers repo's fallback-shaped tags, or (nil) that there are
// too many to remember.
func (m *referrersMemo) keepTags(repo string, tags []string, now time.Time) map[string]bool {
	set := map[string]bool{}
	for _, t := range tags {
		if strings.HasPrefix(t, "sha") && strings.Contains(t, "-") {
			if len(set) >= fallbackTagsMax {
				set = nil
				break
			}
			set[t] = true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tags == nil || len(m.tags) >= fallbackReposMax {
		m.tags = map[string]fallbackTags{}
	}
	m.tags[repo] = fallbackTags{set: set, until: now.Add(fallbackTagsTTL)}
	return set
}

// probe asks the referrers API for d without credentials. It answers the
// list when the API answered it in one page (done), and records whether
// the upstream has the API: a 404 for a manifest it holds means it has
// none; anything else (401, a paged answer) leaves the decision to
// regclient.
func (m *referrersMemo) probe(ctx context.Context, remote string, d digest.Digest) (list []ocispec.Descriptor, done bool) {
	now := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+"/v2/"+remote+"/referrers/"+url.PathEscape(d.String()), nil)
	if err != nil {
		return nil, false
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageIndex)
	req.Header.Set("User-Agent", m.ua)
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotFound:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, probeBodyMax))
		m.set(apiAbsent, now)
		return nil, false
	case http.StatusOK:
		m.set(apiPresent, now)
		if resp.Header.Get("Link") != "" {
			return nil, false // paged: regclient follows the pages
		}
		var ix ocispec.Index
		if err := json.NewDecoder(io.LimitReader(resp.Body, probeBodyMax)).Decode(&ix); err != nil {
			return nil, false
		}
		return ix.Manifests, true
	default:
		m.set(apiPresent, now)
		return nil, false
	}
}

// referrersMemoized answers Referrers from what the connector knows about
// its upstream when it can (handled), with at most the probe or one tag
// list; otherwise the caller asks regclient.
func (u *Upstream) referrersMemoized(ctx context.Context, repo string, d digest.Digest) (list []ocispec.Descriptor, handled bool) {
	if u.refs == nil {
		return nil, false
	}
	remote := u.remote(repo)
	switch u.refs.get(time.Now()) {
	case apiPresent:
		return nil, false
	case apiUnknown:
		if list, done := u.refs.probe(ctx, remote, d); done {
			return list, true
		}
		if u.refs.get(time.Now()) != apiAbsent {
			return nil, false
		}
	}
	set, ok := u.refs.fallbackTags(remote, time.Now())
	if !ok {
		tags, err := u.Tags(ctx, repo)
		if err != nil {
			return nil, false
		}
		set = u.refs.keepTags(remote, tags, time.Now())
	}
	if set == nil {
		return nil, false // too many fallback tags: regclient asks this one
	}
	tag, err := referrer.FallbackTag(u.ref(repo, d.String()))
	if err != nil || set[tag.Tag] {
		return nil, false // referrers exist: regclient reads the fallback tag
	}
	return []ocispec.Descriptor{}, true
}
