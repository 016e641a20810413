package registryapi_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/cache"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
	"github.com/regwarm/regwarm/registryapi"
)

// pullThrough serves a cache registry "hub" over a fake upstream.
type pullThrough struct {
	t   *testing.T
	up  *upstreamtest.Upstream
	st  *store.FS
	url string
}

// newPullThrough starts the API over a cache registry "hub" and the
// registries listed in more (YAML list entries, "" for none).
func newPullThrough(t *testing.T, more string) *pullThrough {
	t.Helper()
	up := upstreamtest.New(t)
	cfg, err := config.Parse([]byte(`version: 1
registries:
  - {name: hub, default: true, connectors: [up]}
` + more + `connectors:
  - {name: up, url: "` + up.URL + `"}
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cacheConfig(t, cfg), st, cache.WithTimeouts(time.Minute, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	h, err := registryapi.New(registryapi.ConfigOf(cfg), st, registryapi.WithReader(c.Serving()))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { srv.Close(); c.Wait() })
	return &pullThrough{t: t, up: up, st: st, url: srv.URL}
}

// get requests blob d of hub/app with a Range header ("" for none).
func (p *pullThrough) get(d digest.Digest, rng string) (int, []byte) {
	p.t.Helper()
	req, err := http.NewRequest("GET", p.url+"/v2/hub/app/blobs/"+d.String(), nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, body
}

// blobSizes go through memory and through a spool file in the cache.
var blobSizes = []int{2 << 20, 17 << 20}

// coldCorruptBlob serves a blob of size bytes that the upstream sends
// corrupt, slowly (a quarter of a second).
func coldCorruptBlob(t *testing.T, size int) (*pullThrough, []byte, digest.Digest) {
	p := newPullThrough(t, "")
	data := upstreamtest.RandomGzip(size)
	d := p.up.AddBlob("app", data)
	p.up.SetRate(int64(size) * 4)
	p.up.SetFault(d.String(), upstreamtest.Fault{Corrupt: true})
	return p, data, d
}

// TestRangeOnColdBlobWaitsForVerification: a Range request on a blob still
// arriving from upstream gets no byte before the whole blob is verified: a
// wrong body (sent slowly) yields an error, a good one the asked-for part.
func TestRangeOnColdBlobWaitsForVerification(t *testing.T) {
	t.Parallel()
	for _, size := range blobSizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			p, data, d := coldCorruptBlob(t, size)
			if status, body := p.get(d, "bytes=0-99"); status/100 == 2 {
				t.Fatalf("Range on a corrupt cold blob: %d with %d bytes", status, len(body))
			} else if status != http.StatusBadGateway {
				t.Errorf("status %d, want 502: %s", status, body)
			}

			p.up.SetFault(d.String(), upstreamtest.Fault{})
			mid := int64(size / 2)
			status, body := p.get(d, fmt.Sprintf("bytes=%d-%d", mid, mid+99))
			if status != http.StatusPartialContent || !bytes.Equal(body, data[mid:mid+100]) {
				t.Fatalf("Range on a good cold blob: %d, %d bytes", status, len(body))
			}
		})
	}
}

// TestRangeAfterFailedFillNoBytes: after a fill failed, a Range request
// (which starts another fill from the same bad upstream) gets an error,
// never the upstream's bytes.
func TestRangeAfterFailedFillNoBytes(t *testing.T) {
	t.Parallel()
	for _, size := range blobSizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			p, data, d := coldCorruptBlob(t, size)
			if status, body := p.get(d, ""); status == http.StatusOK && bytes.Equal(body, data) {
				t.Fatal("corrupt blob served whole")
			}
			for _, rng := range []string{"bytes=0-99", "bytes=-100", fmt.Sprintf("bytes=%d-", size-10)} {
				if status, body := p.get(d, rng); status/100 == 2 {
					t.Fatalf("Range %s after a failed fill: %d with %d bytes", rng, status, len(body))
				} else if !strings.Contains(string(body), "UNAVAILABLE") {
					t.Errorf("Range %s: %d %s", rng, status, body)
				}
			}
		})
	}
}
