package harness

import "testing"

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
