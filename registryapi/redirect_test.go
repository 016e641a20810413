package registryapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// fakePresigner presigns blobs of a filesystem store with made-up URLs, or
// fails with err.
type fakePresigner struct {
	st  *store.FS
	err error
}

func (p fakePresigner) PresignBlob(ctx context.Context, repo store.Repo, d digest.Digest, expiry time.Duration) (*url.URL, error) {
	if _, err := p.st.StatBlob(ctx, repo, d); err != nil {
		return nil, err
	}
	if p.err != nil {
		return nil, p.err
	}
	return url.Parse("https://objects.example/" + d.Encoded() + "?expires=" + expiry.String())
}

func TestBlobRedirect(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("redirected layer")
	d := digest.FromBytes(data)
	if err := st.PutVerifiedBlob(t.Context(), store.Repo{Registry: "local", Name: "app"}, d, data); err != nil {
		t.Fatal(err)
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(h http.Handler, method, path string) (*http.Response, []byte) {
		t.Helper()
		srv := httptest.NewServer(h)
		defer srv.Close()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}

	h, err := New(ConfigOf(cfg), st, WithRedirect(fakePresigner{st: st}))
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := get(h, http.MethodGet, "/v2/local/app/blobs/"+d.String())
	if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != "https://objects.example/"+d.Encoded()+"?expires=20m0s" ||
		resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("GET stored blob: %d, Location %q; want 307 to the presigned URL", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := get(h, http.MethodHead, "/v2/local/app/blobs/"+d.String()); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD stored blob: %d, want 200 (never redirected)", resp.StatusCode)
	}
	if resp, _ := get(h, http.MethodGet, "/v2/local/other/blobs/"+d.String()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET blob not linked in the repository: %d, want 404", resp.StatusCode)
	}

	// A presigner that fails leaves the blob served here.
	h, err = New(ConfigOf(cfg), st, WithRedirect(fakePresigner{st: st, err: errors.New("s3 down")}))
	if err != nil {
		t.Fatal(err)
	}
	resp, body := get(h, http.MethodGet, "/v2/local/app/blobs/"+d.String())
	if resp.StatusCode != http.StatusOK || string(body) != string(data) {
		t.Errorf("GET with a failing presigner: %d %q, want 200 and the blob", resp.StatusCode, body)
	}
	if _, err := New(ConfigOf(cfg), st, WithRedirect(nil)); err == nil {
		t.Error("WithRedirect(nil) accepted")
	}
}
