package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAccess(t *testing.T) {
	t.Parallel()
	log := strings.Join([]string{
		`127.0.0.1 - - [27/Nov/2026:03:48:00 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "skopeo"`,
		`127.0.0.1 - - [27/Nov/2026:03:48:00 +0000] "GET /v2/bench/small/manifests/v1 HTTP/1.1" 200 290 "" "regwarm"`,
		`127.0.0.1 - - [27/Nov/2026:03:48:00 +0000] "HEAD /v2/bench/small/blobs/sha256:aa HTTP/1.1" 200 0 "" "x"`,
		`127.0.0.1 - - [27/Nov/2026:03:48:00 +0000] "GET /v2/bench/small/blobs/sha256:aa HTTP/1.1" 200 1000 "" "x"`,
		`127.0.0.1 - - [27/Nov/2026:03:48:00 +0000] "GET /v2/bench/small/blobs/sha256:aa HTTP/1.1" 200 1000 "" "x"`,
		`127.0.0.1 - - [27/Nov/2026:03:48:00 +0000] "GET /v2/bench/small/blobs/sha256:bb HTTP/1.1" 404 - "" "x"`,
		`time="2026-11-27T03:48:00Z" level=info msg="response completed"`,
		`127.0.0.1 - - [27/Nov/2026:03:48:00 +0000] "GET /v2/bench/small/blobs/sha256:cc HTTP/1.1" 200 77`, // no newline yet
	}, "\n")
	got := parseAccess([]byte(log))
	if got.requests != 6 || got.bytes != 2292 {
		t.Errorf("requests %d bytes %d, want 6 and 2292", got.requests, got.bytes)
	}
	if got.blobGETs["sha256:aa"] != 2 || got.blobGETs["sha256:bb"] != 1 || got.blobGETs["sha256:cc"] != 0 {
		t.Errorf("blob GETs %v", got.blobGETs)
	}
	want := map[string]int{"GET ping": 1, "GET manifest": 1, "HEAD blob": 1, "GET blob": 3}
	for k, v := range want {
		if got.byKind[k] != v {
			t.Errorf("byKind[%q] = %d, want %d (all: %v)", k, got.byKind[k], v, got.byKind)
		}
	}
}

func TestPathKind(t *testing.T) {
	t.Parallel()
	for path, want := range map[string]string{
		"/v2/":                             "ping",
		"/v2/a/b/manifests/v1":             "manifest",
		"/v2/a/blobs/sha256:00":            "blob",
		"/v2/a/blobs/uploads/?digest=x":    "upload",
		"/v2/a/blobs/uploads/abc?_state=1": "upload",
		"/v2/a/tags/list":                  "tags",
		"/metrics":                         "other",
	} {
		if got := pathKind(path); got != want {
			t.Errorf("pathKind(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestMedianAndPairedRatio(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
	m := map[string][]float64{"a": {90, 200, 50}, "b": {100, 100, 100}}
	if got := pairedRatio(m, "a", "b"); got != 0.9 {
		t.Errorf("pairedRatio = %v, want 0.9", got)
	}
}

func TestWriteDoc(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "benchmarks.md")
	section := func(s string) string { return beginMarker + "\n" + s + "\n" + endMarker + "\n" }

	if err := writeDoc(path, section("one")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), docHeader) || !strings.HasSuffix(string(b), section("one")) {
		t.Fatalf("new doc:\n%s", b)
	}

	// Hand-written text around the section survives a rewrite.
	doc := "# Title\n\nbefore\n\n" + section("one") + "\n## Analysis\n\nafter\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeDoc(path, section("two")); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if want := "# Title\n\nbefore\n\n" + section("two") + "\n## Analysis\n\nafter\n"; string(b) != want {
		t.Fatalf("rewritten doc:\n%s\nwant:\n%s", b, want)
	}
}

func TestColdVerdict(t *testing.T) {
	t.Parallel()
	v := func(regwarm, floor float64) map[string]float64 {
		return map[string]float64{targetDirect: 100, targetRegwarm: regwarm, targetRelayStore: floor}
	}
	for _, tc := range []struct {
		name   string
		v      map[string]float64
		cpus   string
		pinned bool
		met    string
		judged bool
	}{
		{"own CPU met", v(108, 101), cpusOwn, true, "yes", true},
		{"own CPU missed, floor ignored", v(112, 115), cpusOwn, true, "**NO**", true},
		{"shared, floor misses too", v(121, 119), cpusShared, true, "not judged: floor 1.19×", false},
		{"shared, floor meets it", v(121, 105), cpusShared, true, "**NO**", true},
		{"shared, no pinned run", v(121, 119), cpusShared, false, "**NO**", true},
		{"shared, no relay", map[string]float64{targetDirect: 100, targetRegwarm: 105}, cpusShared, true, "yes", true},
	} {
		met, judged := coldVerdict(tc.v, tc.cpus, tc.pinned)
		if met != tc.met || judged != tc.judged {
			t.Errorf("%s: got %q %v, want %q %v", tc.name, met, judged, tc.met, tc.judged)
		}
	}
}

func TestUnmeasuredTargetsPrintDash(t *testing.T) {
	t.Parallel()
	v := map[string]float64{targetDirect: 100, targetRegwarm: 110}
	if got := fmtRatio(ratio(v, targetRelay, targetDirect)); got != "—" {
		t.Errorf("ratio of an unmeasured target printed %q", got)
	}
	if got := fmtRatio(ratio(v, targetRegwarm, targetDirect)); got != "1.10" {
		t.Errorf("ratio printed %q, want 1.10", got)
	}
	if got := cell(ms, v, targetProxy); got != "—" {
		t.Errorf("unmeasured cell printed %q", got)
	}
	if got := cell(ms, v, targetDirect); got != "100 ms" {
		t.Errorf("cell printed %q", got)
	}
}

// TestShaper checks that a request through the WAN shaper pays a round
// trip for the connection and one for the exchange, and that a body is
// paced to the link's rate.
func TestShaper(t *testing.T) {
	t.Parallel()
	body := make([]byte, 1<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	defer srv.Close()
	const rtt = 20 * time.Millisecond
	sh, err := startShaper(strings.TrimPrefix(srv.URL, "http://"), rtt, 20e6) // 1 MiB takes ≥ 50 ms
	if err != nil {
		t.Fatal(err)
	}
	defer sh.close()
	start := time.Now()
	resp, err := http.Get("http://" + sh.addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || n != int64(len(body)) {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	if min := 2*rtt + 50*time.Millisecond; took < min {
		t.Fatalf("GET through the shaper took %v, want at least %v", took, min)
	}
}
