package harness

import (
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestPrometheusConfig(t *testing.T) {
	t.Parallel()
	cfg := PrometheusConfig(time.Second, map[string][]string{"regwarm": {"127.0.0.1:1", "127.0.0.1:2"}})
	var got struct {
		Global struct {
			ScrapeInterval string `yaml:"scrape_interval"`
		} `yaml:"global"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(cfg), &got); err != nil {
		t.Fatalf("%v\n%s", err, cfg)
	}
	sc := got.ScrapeConfigs
	if got.Global.ScrapeInterval != "1s" || len(sc) != 1 || sc[0].JobName != "regwarm" ||
		len(sc[0].StaticConfigs) != 1 || len(sc[0].StaticConfigs[0].Targets) != 2 {
		t.Errorf("PrometheusConfig gave\n%s", cfg)
	}
}
