// Package upstreamtest is an in-process upstream registry for tests, with
// failure injection no real server offers: corrupt or truncated bodies,
// rate limiting, errors and stalls, and a malicious upstream that claims
// every digest or redirects blob requests elsewhere. It counts every
// request it gets.
package upstreamtest

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Fault is injected into the answers for one digest or tag.
type Fault struct {
	Status     int           // answer with this status (e.g. 429, 500)
	RetryAfter string        // Retry-After header with Status
	Corrupt    bool          // flip a byte of the body (digest mismatch)
	Truncate   bool          // send half the body, then drop the connection
	StallAfter int           // send this many bytes, then stall (slow loris)
	Delay      time.Duration // wait before answering
}

// Upstream is a fake registry.
type Upstream struct {
	*httptest.Server

	mu        sync.Mutex
	blobs     map[digest.Digest][]byte
	manifests map[digest.Digest]manifestEntry
	tags      map[string]map[string]digest.Digest // repo → tag → digest
	repos     map[string]map[digest.Digest]bool   // repo → visible digests
	faults    map[string]Fault                    // digest or tag → fault
	requests  map[string]int                      // "METHOD /path" → count
	down      bool
	stall     chan struct{}
	rate      int64 // bytes/s per blob response, 0 unlimited
	user      string
	pass      string
	headers   http.Header
	referrers map[digest.Digest][]string // subject → descriptor JSON
	lieSize   int64                      // > 0: claim every unknown digest (see Lie)
	redirect  string                     // blob requests go there (see RedirectBlobs)
	noRefAPI  bool                       // the referrers API answers 404 (see NoReferrersAPI)
}

type manifestEntry struct {
	mediaType string
	data      []byte
}

// New starts an empty fake upstream, closed with the test.
func New(t testing.TB) *Upstream {
	u := &Upstream{
		blobs: map[digest.Digest][]byte{}, manifests: map[digest.Digest]manifestEntry{},
		tags: map[string]map[string]digest.Digest{}, repos: map[string]map[digest.Digest]bool{},
		faults: map[string]Fault{}, requests: map[string]int{}, stall: make(chan struct{}),
		headers: http.Header{}, referrers: map[digest.Digest][]string{},
	}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(func() {
		u.mu.Lock()
		select {
		case <-u.stall:
		default:
			close(u.stall)
		}
		u.mu.Unlock()
		u.Server.Close()
	})
	return u
}

// AddBlob stores data as a blob of repo and returns its digest.
func (u *Upstream) AddBlob(repo string, data []byte) digest.Digest {
	d := digest.FromBytes(data)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.blobs[d] = data
	u.visible(repo, d)
	return d
}

func (u *Upstream) visible(repo string, d digest.Digest) {
	if u.repos[repo] == nil {
		u.repos[repo] = map[digest.Digest]bool{}
	}
	u.repos[repo][d] = true
}

// AddManifest stores a manifest in repo, tagged when tag is non-empty. A
// manifest with a subject is listed by the referrers API.
func (u *Upstream) AddManifest(repo, tag, mediaType string, data []byte) digest.Digest {
	d := digest.FromBytes(data)
	var m struct {
		ArtifactType string `json:"artifactType"`
		Subject      *struct {
			Digest digest.Digest `json:"digest"`
		} `json:"subject"`
	}
	_ = json.Unmarshal(data, &m)
	u.mu.Lock()
	defer u.mu.Unlock()
	if m.Subject != nil {
		u.referrers[m.Subject.Digest] = append(u.referrers[m.Subject.Digest],
			fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d,"artifactType":%q}`, mediaType, d, len(data), m.ArtifactType))
	}
	u.manifests[d] = manifestEntry{mediaType, data}
	u.visible(repo, d)
	if tag != "" {
		if u.tags[repo] == nil {
			u.tags[repo] = map[string]digest.Digest{}
		}
		u.tags[repo][tag] = d
	}
	return d
}

// Image is a generated single-platform image.
type Image struct {
	Manifest []byte
	Digest   digest.Digest
	Config   digest.Digest
	Layers   []digest.Digest
}

// AddImage generates an OCI image with layers of random data of the given
// sizes, stores it in repo under tag and returns it.
func (u *Upstream) AddImage(repo, tag string, sizes ...int) Image {
	var img Image
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"created":%q}`, rand.Text()))
	img.Config = u.AddBlob(repo, cfg)
	var layers []string
	for _, n := range sizes {
		data := RandomGzip(n)
		d := u.AddBlob(repo, data)
		img.Layers = append(img.Layers, d)
		layers = append(layers, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, d, len(data)))
	}
	img.Manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		img.Config, len(cfg), strings.Join(layers, ",")))
	img.Digest = u.AddManifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", img.Manifest)
	return img
}

// RandomGzip returns n bytes of incompressible gzip-framed data.
func RandomGzip(n int) []byte {
	raw := make([]byte, n)
	_, _ = rand.Read(raw)
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.NoCompression)
	_, _ = w.Write(raw)
	_ = w.Close()
	return b.Bytes()
}

// Tag points tag of repo at an existing manifest.
func (u *Upstream) Tag(repo, tag string, d digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.tags[repo] == nil {
		u.tags[repo] = map[string]digest.Digest{}
	}
	u.tags[repo][tag] = d
}

// Delete removes a blob or manifest everywhere.
func (u *Upstream) Delete(d digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.blobs, d)
	delete(u.manifests, d)
}

// SetFault injects f for key (a digest or tag); a zero Fault clears it.
func (u *Upstream) SetFault(key string, f Fault) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if f == (Fault{}) {
		delete(u.faults, key)
		return
	}
	u.faults[key] = f
}

// Lie makes the upstream malicious: a HEAD of any blob or manifest it does
// not hold answers 200 with size bytes, and a GET answers size bytes that
// do not hash to the digest asked for (slowly, with SetRate). Zero makes it
// honest again.
func (u *Upstream) Lie(size int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lieSize = size
}

// RedirectBlobs answers every blob request with a 307 to the same path on
// target (another server's URL, say a lying one); "" stops it.
func (u *Upstream) RedirectBlobs(target string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.redirect = target
}

// SetRate limits each blob response to bytes per second (0: unlimited),
// like a remote registry on a slower link.
func (u *Upstream) SetRate(bytesPerSecond int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.rate = bytesPerSecond
}

// RequireBasic makes every request need Basic credentials user:pass.
func (u *Upstream) RequireBasic(user, pass string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.user, u.pass = user, pass
}

// SetHeader adds a header to every response (e.g. RateLimit-Remaining).
func (u *Upstream) SetHeader(key, value string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.headers.Set(key, value)
}

// NoReferrersAPI makes the referrers API answer 404, like a registry
// without it (clients then fall back to the sha256-<hex> tag schema).
func (u *Upstream) NoReferrersAPI() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.noRefAPI = true
}

// SetDown makes every request fail with 503 (true) or work again (false).
func (u *Upstream) SetDown(down bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.down = down
}

// Count returns how many requests matched method and a path suffix.
func (u *Upstream) Count(method, pathSuffix string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k, v := range u.requests {
		m, p, _ := strings.Cut(k, " ")
		if m == method && strings.HasSuffix(p, pathSuffix) {
			n += v
		}
	}
	return n
}

// Total returns the number of requests received (pings excluded).
func (u *Upstream) Total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k, v := range u.requests {
		if !strings.HasSuffix(k, " /v2/") {
			n += v
		}
	}
	return n
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.requests[r.Method+" "+r.URL.Path]++
	down := u.down
	user, pass := u.user, u.pass
	for k, v := range u.headers {
		w.Header()[k] = v
	}
	u.mu.Unlock()
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	if user != "" {
		if gu, gp, ok := r.BasicAuth(); !ok || gu != user || gp != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="upstreamtest"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
	}
	if down {
		http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"down"}]}`, http.StatusServiceUnavailable)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	if p == "" {
		_, _ = w.Write([]byte("{}"))
		return
	}
	switch {
	case strings.HasSuffix(p, "/tags/list"):
		u.serveTags(w, strings.TrimSuffix(p, "/tags/list"))
	case strings.Contains(p, "/manifests/"):
		i := strings.LastIndex(p, "/manifests/")
		u.serveManifest(w, r, p[:i], p[i+len("/manifests/"):])
	case strings.Contains(p, "/blobs/"):
		i := strings.LastIndex(p, "/blobs/")
		u.serveBlob(w, r, p[:i], digest.Digest(p[i+len("/blobs/"):]))
	case strings.Contains(p, "/referrers/"):
		i := strings.LastIndex(p, "/referrers/")
		u.mu.Lock()
		list := strings.Join(u.referrers[digest.Digest(p[i+len("/referrers/"):])], ",")
		noAPI := u.noRefAPI
		u.mu.Unlock()
		if noAPI { // as distribution 2.x: its router knows no such path
			http.Error(w, "404 page not found", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		_, _ = w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + list + `]}`))
	default:
		notFound(w, "NAME_UNKNOWN")
	}
}

func notFound(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_, _ = fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"not found"}]}`, code)
}

func (u *Upstream) serveTags(w http.ResponseWriter, repo string) {
	u.mu.Lock()
	tags := []string{}
	for t := range u.tags[repo] {
		tags = append(tags, t)
	}
	u.mu.Unlock()
	if len(tags) == 0 {
		notFound(w, "NAME_UNKNOWN")
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"name": repo, "tags": tags})
}

// fault applies an injected status or delay; it reports whether it answered.
func (u *Upstream) fault(w http.ResponseWriter, f Fault) bool {
	if f.Delay > 0 {
		time.Sleep(f.Delay)
	}
	if f.Status != 0 {
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.Status)
		_, _ = fmt.Fprintf(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"injected %d"}]}`, f.Status)
		return true
	}
	return false
}

func (u *Upstream) serveManifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	u.mu.Lock()
	f := u.faults[ref]
	d := digest.Digest(ref)
	if !strings.Contains(ref, ":") {
		d = u.tags[repo][ref]
	}
	m, ok := u.manifests[d]
	ok = ok && u.repos[repo][d]
	lie := u.lieSize
	u.mu.Unlock()
	if u.fault(w, f) {
		return
	}
	if !ok && lie > 0 && d.Validate() == nil {
		m, ok = manifestEntry{"application/vnd.oci.image.manifest.v1+json", lieBytes(lie)}, true
	}
	if !ok {
		notFound(w, "MANIFEST_UNKNOWN")
		return
	}
	data := m.data
	if f.Corrupt {
		data = append([]byte(nil), data...)
		data[len(data)-2] ^= 0x20
	}
	w.Header().Set("Content-Type", m.mediaType)
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(data)
}

func (u *Upstream) serveBlob(w http.ResponseWriter, r *http.Request, repo string, d digest.Digest) {
	u.mu.Lock()
	f := u.faults[d.String()]
	data, ok := u.blobs[d]
	ok = ok && u.repos[repo][d]
	stall := u.stall
	rate := u.rate
	lie, redirect := u.lieSize, u.redirect
	u.mu.Unlock()
	if redirect != "" {
		http.Redirect(w, r, redirect+r.URL.Path, http.StatusTemporaryRedirect)
		return
	}
	if u.fault(w, f) {
		return
	}
	if !ok && lie > 0 && d.Validate() == nil {
		data, ok = lieBytes(lie), true
	}
	if !ok {
		notFound(w, "BLOB_UNKNOWN")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	if r.Method == http.MethodHead {
		return
	}
	switch {
	case f.Corrupt:
		data = append([]byte(nil), data...)
		data[len(data)/2] ^= 0xff
		writeThrottled(w, data, rate)
	case f.Truncate:
		// Returning short of Content-Length makes the server drop the connection.
		_, _ = w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
	case f.StallAfter > 0:
		_, _ = w.Write(data[:f.StallAfter])
		w.(http.Flusher).Flush()
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	case rate > 0:
		writeThrottled(w, data, rate)
	default:
		_, _ = w.Write(data)
	}
}

// lieBytes is what a lying upstream sends for a digest it does not hold.
func lieBytes(n int64) []byte { return bytes.Repeat([]byte{'x'}, int(n)) }

// writeThrottled sends data in 64 KiB chunks paced to rate bytes/s (at
// once when rate is 0).
func writeThrottled(w http.ResponseWriter, data []byte, rate int64) {
	if rate <= 0 {
		_, _ = w.Write(data)
		return
	}
	const chunk = 64 << 10
	start := time.Now()
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		if _, err := w.Write(data[off:end]); err != nil {
			return
		}
		due := start.Add(time.Duration(float64(end) / float64(rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
	}
}

// Index is a generated multi-platform image.
type Index struct {
	Index    []byte
	Digest   digest.Digest
	Children map[string]Image // by "os/arch"
}

// Blobs lists every blob of every platform.
func (ix Index) Blobs() []digest.Digest {
	var out []digest.Digest
	for _, c := range ix.Children {
		out = append(out, c.Config)
		out = append(out, c.Layers...)
	}
	return out
}

// AddIndex generates one image per platform ("linux/amd64", …) with
// layers of the given sizes, and an OCI index over them tagged tag.
func (u *Upstream) AddIndex(repo, tag string, platforms []string, sizes ...int) Index {
	ix := Index{Children: map[string]Image{}}
	var entries []string
	for _, p := range platforms {
		img := u.AddImage(repo, "", sizes...)
		ix.Children[p] = img
		os, arch, _ := strings.Cut(p, "/")
		entries = append(entries, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":{"os":%q,"architecture":%q}}`,
			img.Digest, len(img.Manifest), os, arch))
	}
	ix.Index = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(entries, ",") + `]}`)
	ix.Digest = u.AddManifest(repo, tag, "application/vnd.oci.image.index.v1+json", ix.Index)
	return ix
}
