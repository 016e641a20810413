package harness

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	t.Parallel()
	text := `# HELP regwarm_cache_requests_total Pull requests.
# TYPE regwarm_cache_requests_total counter
regwarm_cache_requests_total{kind="blob",registry="hub",result="miss"} 7
regwarm_cache_requests_total{kind="manifest",registry="hub",result="stale"} 2
regwarm_cache_requests_total{kind="manifest",registry="other",result="stale"} 5
regwarm_coalesced_requests_total 3
odd{v="a \"quoted\" \\ value"} 1.5e+00
`
	m, err := ParseMetrics(text)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		kv   []string
		want float64
	}{
		{"regwarm_cache_requests_total", []string{"registry", "hub", "result", "stale"}, 2},
		{"regwarm_cache_requests_total", []string{"result", "stale"}, 7},
		{"regwarm_cache_requests_total", nil, 14},
		{"regwarm_coalesced_requests_total", nil, 3},
		{"odd", []string{"v", `a "quoted" \ value`}, 1.5},
		{"missing", nil, 0},
	} {
		if got := m.Value(tc.name, tc.kv...); got != tc.want {
			t.Errorf("Value(%s, %v) = %v, want %v", tc.name, tc.kv, got, tc.want)
		}
	}
	if !m.Has("regwarm_coalesced_requests_total") || m.Has("regwarm_cache_requests_total", "registry", "nope") {
		t.Error("Has: wrong answer")
	}
	if _, err := ParseMetrics("bad{x=1} 2\n"); err == nil {
		t.Error("ParseMetrics accepted an unquoted label value")
	}
}

func TestFetchMetrics(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			fmt.Fprintln(w, `regwarm_sync_jobs_total{result="done"} 4`)
		default:
			http.Error(w, "no", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	m, err := FetchMetrics(srv.Client(), addr)
	if err != nil || m.Value("regwarm_sync_jobs_total", "result", "done") != 4 {
		t.Errorf("FetchMetrics: %+v, %v; want regwarm_sync_jobs_total 4", m, err)
	}
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	if m, err := FetchMetrics(down.Client(), strings.TrimPrefix(down.URL, "http://")); err == nil {
		t.Errorf("FetchMetrics of a 503: %+v, want an error", m)
	}
}
