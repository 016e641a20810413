package harness

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sample is one line of a Prometheus text exposition.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is one scrape of a /metrics endpoint.
type Metrics []Sample

// ScrapeMetrics fetches http://addr/metrics (rw.MetricsAddr) and parses it;
// it fails the test when that does not work.
func ScrapeMetrics(t testing.TB, addr string) Metrics {
	t.Helper()
	if addr == "" {
		t.Fatal("ScrapeMetrics: no metrics listener (the docker-registry stand-in has none)")
	}
	m, err := FetchMetrics(&http.Client{Timeout: 10 * time.Second}, addr)
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	return m
}

// FetchMetrics is ScrapeMetrics without a test to fail, for goroutines:
// it GETs http://addr/metrics with client and parses the answer.
func FetchMetrics(client *http.Client, addr string) (Metrics, error) {
	status, body, err := getBody(client, "http://"+addr+"/metrics")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET http://%s/metrics: status %d", addr, status)
	}
	return ParseMetrics(string(body))
}

// Value returns the sum of the samples named name whose labels include
// every key/value pair in kv ("registry", "hub", "result", "stale", …).
func (m Metrics) Value(name string, kv ...string) float64 {
	var sum float64
	for _, s := range m {
		if s.Name == name && s.matches(kv) {
			sum += s.Value
		}
	}
	return sum
}

// Has reports whether a sample named name with those labels exists.
func (m Metrics) Has(name string, kv ...string) bool {
	for _, s := range m {
		if s.Name == name && s.matches(kv) {
			return true
		}
	}
	return false
}

func (s Sample) matches(kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		if s.Labels[kv[i]] != kv[i+1] {
			return false
		}
	}
	return true
}

// ParseMetrics parses the Prometheus text format (comments skipped).
func ParseMetrics(text string) (Metrics, error) {
	var out Metrics
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", n+1, line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return s, fmt.Errorf("no value")
	}
	s.Name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, ", ")
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.Index(line, `="`)
			if eq <= 0 {
				return s, fmt.Errorf("bad label")
			}
			key := line[:eq]
			line = line[eq+2:]
			var val strings.Builder
			for {
				if line == "" {
					return s, fmt.Errorf("unterminated label value")
				}
				c := line[0]
				line = line[1:]
				if c == '"' {
					break
				}
				if c == '\\' && line != "" {
					switch line[0] {
					case 'n':
						c = '\n'
					default:
						c = line[0]
					}
					line = line[1:]
				}
				val.WriteByte(c)
			}
			s.Labels[key] = val.String()
		}
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.Value = v
	return s, nil
}
