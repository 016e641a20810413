package harness

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Prometheus is a running Debian prometheus (2.42) with its TSDB in
// t.TempDir, queried through its HTTP API.
type Prometheus struct {
	*Process
	// Addr is the web listener, 127.0.0.1:PORT.
	Addr string
	// ConfigPath is the config file it was started with.
	ConfigPath string

	t testing.TB
}

// PrometheusConfig returns a Prometheus config that scrapes /metrics of
// each job's targets ("127.0.0.1:PORT") every interval.
func PrometheusConfig(interval time.Duration, jobs map[string][]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n  scrape_interval: %s\n  scrape_timeout: %s\n  evaluation_interval: %s\nscrape_configs:\n",
		interval, interval, interval)
	for job, targets := range jobs {
		quoted := make([]string, len(targets))
		for i, tg := range targets {
			quoted[i] = strconv.Quote(tg)
		}
		fmt.Fprintf(&b, "  - job_name: %q\n    static_configs:\n      - targets: [%s]\n", job, strings.Join(quoted, ", "))
	}
	return b.String()
}

// StartPrometheus writes cfgYAML to a file, checks it with `promtool check
// config`, starts prometheus on a free loopback port and waits until
// /-/ready answers 200.
func StartPrometheus(t testing.TB, cfgYAML string) *Prometheus {
	t.Helper()
	dir := t.TempDir()
	p := &Prometheus{Addr: FreeAddr(t), ConfigPath: filepath.Join(dir, "prometheus.yml"), t: t}
	if err := os.WriteFile(p.ConfigPath, []byte(cfgYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := Must(t, nil, "promtool", "check", "config", p.ConfigPath); !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check config: no SUCCESS in\n%s", indent(out))
	}
	p.Process = StartProcess(t, "prometheus", nil, "prometheus",
		"--config.file="+p.ConfigPath,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+p.Addr,
		"--log.level=warn")
	waitStart(t, p.Process, p.URL()+"/-/ready", ReadyTimeout, http.StatusOK)
	return p
}

// URL returns "http://ADDR".
func (p *Prometheus) URL() string { return "http://" + p.Addr }

// PromTarget is one active scrape target from /api/v1/targets.
type PromTarget struct {
	Labels    map[string]string `json:"labels"`
	ScrapeURL string            `json:"scrapeUrl"`
	Health    string            `json:"health"` // up, down, unknown
	LastError string            `json:"lastError"`
}

// PromSample is one element of an instant vector.
type PromSample struct {
	Metric map[string]string
	Value  float64
}

// API GETs /api/v1/<path> with params and decodes the envelope's data
// into out; a status other than "success" is an error.
func (p *Prometheus) API(path string, params url.Values, out any) error {
	status, body, err := getBody(&http.Client{Timeout: 10 * time.Second}, p.URL()+"/api/v1/"+path+"?"+params.Encode())
	if err != nil {
		return err
	}
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("/api/v1/%s: status %d: %v", path, status, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("/api/v1/%s: %s: %s", path, env.ErrorType, env.Error)
	}
	return json.Unmarshal(env.Data, out)
}

// Targets returns the active scrape targets.
func (p *Prometheus) Targets() ([]PromTarget, error) {
	var data struct {
		ActiveTargets []PromTarget `json:"activeTargets"`
	}
	err := p.API("targets", url.Values{"state": {"active"}}, &data)
	return data.ActiveTargets, err
}

// Query evaluates expr now; the result must be an instant vector.
func (p *Prometheus) Query(expr string) ([]PromSample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.API("query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: result type %s, want vector", expr, data.ResultType)
	}
	out := make([]PromSample, 0, len(data.Result))
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %w", expr, r.Value[1], err)
		}
		out = append(out, PromSample{Metric: r.Metric, Value: v})
	}
	return out, nil
}

// QueryValue evaluates expr, which must give exactly one sample, and
// returns its value.
func (p *Prometheus) QueryValue(expr string) (float64, error) {
	res, err := p.Query(expr)
	if err != nil {
		return 0, err
	}
	if len(res) != 1 {
		return 0, fmt.Errorf("query %s: %d samples, want 1", expr, len(res))
	}
	return res[0].Value, nil
}

// LabelNames returns the label names of the series that match selector.
func (p *Prometheus) LabelNames(selector string) ([]string, error) {
	var names []string
	err := p.API("labels", url.Values{"match[]": {selector}}, &names)
	return names, err
}
