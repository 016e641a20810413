package connector

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// webServer answers everything like a web server that is not a registry.
func webServer(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("<html>404 page not found</html>"))
	}))
	t.Cleanup(s.Close)
	return s
}

func TestProbe(t *testing.T) {
	t.Parallel()
	answer := func(status int, header ...string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v2/" {
				http.NotFound(w, r)
				return
			}
			for i := 0; i+1 < len(header); i += 2 {
				w.Header().Set(header[i], header[i+1])
			}
			w.WriteHeader(status)
		}))
		t.Cleanup(s.Close)
		return s
	}
	for _, tc := range []struct {
		name string
		url  string
		ok   bool
	}{
		{"registry", answer(200, "Docker-Distribution-Api-Version", "registry/2.0").URL, true},
		{"registry with auth", answer(401, "WWW-Authenticate", `Bearer realm="x"`).URL, true},
		{"json 200", answer(200, "Content-Type", "application/json").URL, true},
		{"web server", webServer(t).URL, false},
		{"html 200", answer(200, "Content-Type", "text/html").URL, false},
		{"401 without challenge", answer(401).URL, false},
		{"nothing listening", "http://127.0.0.1:1", false},
	} {
		err := Probe(context.Background(), tc.url, nil)
		if (err == nil) != tc.ok {
			t.Errorf("%s: Probe = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

// syncBuffer is a strings.Builder safe for a logger and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNotARegistryIsLogged: a connector URL that answers like a web server
// still means "not found" to callers, and a warning says why, once.
func TestNotARegistryIsLogged(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	u, err := New(Config{Name: "web", URL: webServer(t).URL},
		WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := u.GetManifest(context.Background(), "library/alpine", "3"); !IsNotFound(err) {
			t.Fatalf("GetManifest = %v, want not found", err)
		}
	}
	if n := strings.Count(logs.String(), "is the connector url a registry?"); n != 1 {
		t.Errorf("warned %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "connector=web") {
		t.Errorf("the warning does not name the connector:\n%s", logs.String())
	}
}
