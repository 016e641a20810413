package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// ruleFile is the Prometheus rule file format, decoded with KnownFields.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// wantAlerts are the alerts operators and docs/metrics.md rely on.
var wantAlerts = []string{
	"RegwarmTargetDown", "RegwarmServingErrors", "RegwarmUpstreamFailing",
	"RegwarmWorkBacklogGrowing", "RegwarmSyncFailures", "RegwarmDanglingReferences",
	"RegwarmJobNotSucceeding", "RegwarmStoreDiskFilling", "RegwarmEventsDropped",
	"RegwarmStoreWritesStuck", "RegwarmRegistryOverBudget",
}

func decodeStrict(t *testing.T, data []byte, v any, what string) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestPrometheusRules(t *testing.T) {
	t.Parallel()
	var rf ruleFile
	decodeStrict(t, readFile(t, "deploy", "prometheus", "rules.yml"), &rf, "rules.yml")
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			checkMetricRefs(t, "rules.yml "+r.Alert+r.Record, r.Expr)
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			if r.Labels["severity"] == "" {
				t.Errorf("alert %s has no severity label", r.Alert)
			}
			for _, a := range []string{"summary", "runbook"} {
				v := r.Annotations[a]
				if strings.TrimSpace(v) == "" || strings.Contains(v, "\n") {
					t.Errorf("alert %s: annotations.%s must be one non-empty line, got %q", r.Alert, a, v)
				}
				checkMetricRefs(t, "rules.yml "+r.Alert+" "+a, v)
			}
		}
	}
	for _, a := range wantAlerts {
		if !slices.Contains(alerts, a) {
			t.Errorf("rules.yml has no alert %s", a)
		}
	}

	// Every alert is exercised by rules_test.yml, firing at least once.
	tests := string(readFile(t, "deploy", "prometheus", "rules_test.yml"))
	for _, a := range alerts {
		if !strings.Contains(tests, "alertname: "+a+"\n") {
			t.Errorf("rules_test.yml does not test %s", a)
		}
	}

	promtool := requireTool(t, "promtool")
	dir := path("deploy", "prometheus")
	run(t, dir, nil, promtool, "check", "config", "prometheus.yml")
	run(t, dir, nil, promtool, "check", "rules", "rules.yml")
	run(t, dir, nil, promtool, "test", "rules", "rules_test.yml")
}

// fileSD is one entry of a Prometheus file_sd targets file.
type fileSD struct {
	Targets []string          `yaml:"targets"`
	Labels  map[string]string `yaml:"labels"`
}

// TestPrometheusTargets checks that every scrape job of prometheus.yml has
// its targets file, here and in deploy/compose.
func TestPrometheusTargets(t *testing.T) {
	t.Parallel()
	var pc struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			FileSDConfigs []struct {
				Files []string `yaml:"files"`
			} `yaml:"file_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readFile(t, "deploy", "prometheus", "prometheus.yml"), &pc); err != nil {
		t.Fatal(err)
	}
	var jobs []string
	for _, sc := range pc.ScrapeConfigs {
		jobs = append(jobs, sc.JobName)
		for _, fs := range sc.FileSDConfigs {
			for _, f := range fs.Files {
				for _, dir := range []string{"deploy/prometheus", "deploy/compose/prometheus-targets"} {
					name := f
					if dir != "deploy/prometheus" {
						name = strings.TrimPrefix(f, "targets/")
					}
					var entries []fileSD
					decodeStrict(t, readFile(t, dir, name), &entries, filepath.Join(dir, name))
				}
			}
		}
	}
	slices.Sort(jobs)
	if want := []string{"regwarm-run", "regwarm-serve", "regwarm-worker"}; !slices.Equal(jobs, want) {
		t.Errorf("scrape jobs %q, want %q", jobs, want)
	}
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// grafanaVars replaces the dashboard's variables by values that make its
// queries plain PromQL.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"$job", "regwarm-.*", "$registry", ".*", "$connector", ".*",
)

func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	data := readFile(t, "deploy", "grafana", "regwarm.json")
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("regwarm.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if q, ok := v.Query.(string); ok {
			checkMetricRefs(t, "variable "+v.Name, q)
		} else if m, ok := v.Query.(map[string]any); ok {
			checkMetricRefs(t, "variable "+v.Name, fmt.Sprint(m["query"]))
		}
	}
	if vars["datasource"] != "datasource" {
		t.Error("the dashboard needs a datasource template variable named datasource")
	}

	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	if len(all) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	ids := map[int]string{}
	var exprs []string
	for _, p := range all {
		name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 {
			t.Errorf("%s: id must be positive", name)
		} else if other, dup := ids[p.ID]; dup {
			t.Errorf("%s: id already used by %q", name, other)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: bad gridPos %+v", name, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("%s: needs a title and at least one query", name)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource must be the ${datasource} variable", name)
		}
		for _, tg := range p.Targets {
			checkMetricRefs(t, name, tg.Expr)
			exprs = append(exprs, grafanaVars.Replace(tg.Expr))
		}
	}
	checkOverlap(t, all)

	// promtool parses every query: wrap them as recording rules.
	promtool := requireTool(t, "promtool")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(e) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard:q%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, ".", nil, promtool, "check", "rules", f)
}

// checkOverlap fails for panels whose grid rectangles intersect.
func checkOverlap(t *testing.T, ps []panel) {
	t.Helper()
	for i, a := range ps {
		for _, b := range ps[i+1:] {
			if a.GridPos == nil || b.GridPos == nil {
				continue
			}
			ga, gb := a.GridPos, b.GridPos
			if ga.X < gb.X+gb.W && gb.X < ga.X+ga.W && ga.Y < gb.Y+gb.H && gb.Y < ga.Y+ga.H {
				t.Errorf("panels %q and %q overlap", a.Title, b.Title)
			}
		}
	}
}

var docHeadingRE = regexp.MustCompile("(?m)^### (.+)$")

// TestMetricsDoc checks that docs/metrics.md documents every metric, under
// a heading, and names no metric that does not exist.
func TestMetricsDoc(t *testing.T) {
	t.Parallel()
	doc := string(readFile(t, "docs", "metrics.md"))
	checkMetricRefs(t, "docs/metrics.md", doc)
	var headed []string
	for _, m := range docHeadingRE.FindAllStringSubmatch(doc, -1) {
		headed = append(headed, metricRefRE.FindAllString(m[1], -1)...)
	}
	_, base := knownMetrics(t)
	for _, name := range base {
		if !slices.Contains(headed, name) {
			t.Errorf("docs/metrics.md has no ### heading for %s", name)
		}
	}
	for _, a := range wantAlerts {
		if !strings.Contains(doc, "`"+a+"`") {
			t.Errorf("docs/metrics.md does not list the alert %s", a)
		}
	}
	for _, s := range []string{"no repository, tag", "initialised to zero", "exported_job"} {
		if !strings.Contains(doc, s) {
			t.Errorf("docs/metrics.md lost the note %q", s)
		}
	}
}
