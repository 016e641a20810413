package deploy_test

import (
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const composeDir = "deploy/compose"

// composeFile is the part of compose.yaml the consistency checks read.
type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

// TestComposeConfig runs docker-compose's own validation.
func TestComposeConfig(t *testing.T) {
	t.Parallel()
	dc := requireTool(t, "docker-compose")
	run(t, path(composeDir), []string{"REGWARM_NATS_PASSWORD=x"}, dc, "-f", "compose.yaml", "config", "-q")
}

// TestComposeIsConsistent checks that the services, regwarm.yaml,
// nats.conf, nginx.conf and the Prometheus targets agree.
func TestComposeIsConsistent(t *testing.T) {
	t.Parallel()
	var cf composeFile
	if err := yaml.Unmarshal(readFile(t, composeDir, "compose.yaml"), &cf); err != nil {
		t.Fatal(err)
	}
	byPrefix := func(prefix string) []string {
		var out []string
		for name := range cf.Services {
			if strings.HasPrefix(name, prefix) {
				out = append(out, name)
			}
		}
		slices.Sort(out)
		return out
	}
	nats, serves, workers := byPrefix("nats-"), byPrefix("serve-"), byPrefix("worker-")
	if len(nats) != 3 || len(serves) != 2 || len(workers) != 2 {
		t.Fatalf("services: nats %q, serve %q, worker %q; want 3, 2 and 2", nats, serves, workers)
	}
	for _, s := range []string{"lb", "prometheus", "grafana"} {
		if _, ok := cf.Services[s]; !ok {
			t.Errorf("no service %s", s)
		}
	}

	cfg := parseConfig(t, readFile(t, composeDir, "regwarm.yaml"), "deploy/compose/regwarm.yaml")
	if cfg.NATS.Replicas != 3 {
		t.Errorf("regwarm.yaml nats.replicas %d, want 3", cfg.NATS.Replicas)
	}
	var urlHosts []string
	for _, u := range strings.Split(cfg.NATS.URL, ",") {
		host := strings.TrimPrefix(strings.TrimSpace(u), "nats://")
		h, _, err := net.SplitHostPort(host)
		if err != nil {
			t.Fatalf("nats.url entry %q: %v", u, err)
		}
		urlHosts = append(urlHosts, h)
	}
	slices.Sort(urlHosts)
	if !slices.Equal(urlHosts, nats) {
		t.Errorf("regwarm.yaml nats.url names %q, the NATS services are %q", urlHosts, nats)
	}
	for what, addr := range map[string]string{"serve.listen": cfg.Serve.Listen, "metrics.listen": cfg.Metrics.Listen} {
		if host, _, _ := net.SplitHostPort(addr); host != "0.0.0.0" {
			t.Errorf("regwarm.yaml %s is %s; other containers reach it only on 0.0.0.0", what, addr)
		}
	}
	_, metricsPort, _ := net.SplitHostPort(cfg.Metrics.Listen)
	_, apiPort, _ := net.SplitHostPort(cfg.Serve.Listen)

	// Every serve and worker shares one store volume and the config.
	var storeVolume string
	for _, name := range append(slices.Clone(serves), workers...) {
		s := cf.Services[name]
		verb := strings.TrimRight(name, "-0123456789")
		if len(s.Command) == 0 || s.Command[0] != verb {
			t.Errorf("service %s runs %q, want regwarm %s", name, s.Command, verb)
		}
		var vol string
		for _, v := range s.Volumes {
			src, dst, _ := strings.Cut(v, ":")
			if strings.HasPrefix(dst, "/var/lib/regwarm") {
				vol = src
			}
		}
		if _, named := cf.Volumes[vol]; !named {
			t.Errorf("service %s: /var/lib/regwarm is not on a named volume (%q)", name, vol)
		}
		if storeVolume == "" {
			storeVolume = vol
		} else if vol != storeVolume {
			t.Errorf("service %s stores in %q, others in %q", name, vol, storeVolume)
		}
		if !slices.Contains(s.Volumes, "./regwarm.yaml:/etc/regwarm/regwarm.yaml:ro") {
			t.Errorf("service %s does not mount regwarm.yaml read-only at /etc/regwarm/regwarm.yaml", name)
		}
	}

	// NATS: one config, each server named, routes to all three.
	conf := string(readFile(t, composeDir, "nats.conf"))
	var routes []string
	for _, m := range regexp.MustCompile(`nats-route://([a-z0-9-]+):6222`).FindAllStringSubmatch(conf, -1) {
		routes = append(routes, m[1])
	}
	slices.Sort(routes)
	if !slices.Equal(routes, nats) {
		t.Errorf("nats.conf routes %q, the NATS services are %q", routes, nats)
	}
	for _, n := range nats {
		if got := cf.Services[n].Environment["NATS_SERVER_NAME"]; got != n {
			t.Errorf("service %s: NATS_SERVER_NAME %q", n, got)
		}
	}
	if ns, err := exec.LookPath("nats-server"); err == nil {
		run(t, path(composeDir), []string{"NATS_SERVER_NAME=nats-1", "REGWARM_NATS_PASSWORD=x"}, ns, "-c", "nats.conf", "-t")
	} else {
		t.Log("nats-server not on PATH: nats.conf not checked by the server")
	}

	// nginx balances over exactly the serve replicas.
	var upstreams []string
	for _, m := range regexp.MustCompile(`(?m)^\s*server ([a-z0-9-]+):(\d+)`).FindAllStringSubmatch(string(readFile(t, composeDir, "nginx.conf")), -1) {
		upstreams = append(upstreams, m[1])
		if m[2] != apiPort {
			t.Errorf("nginx.conf sends to %s:%s; serve.listen port is %s", m[1], m[2], apiPort)
		}
	}
	slices.Sort(upstreams)
	if !slices.Equal(upstreams, serves) {
		t.Errorf("nginx.conf upstreams %q, the serve services are %q", upstreams, serves)
	}

	// Prometheus scrapes exactly the serve and worker containers.
	for job, want := range map[string][]string{"regwarm-serve": serves, "regwarm-worker": workers, "regwarm-run": nil} {
		var entries []fileSD
		decodeStrict(t, readFile(t, composeDir, "prometheus-targets", job+".yml"), &entries, job+".yml")
		var got []string
		for _, e := range entries {
			for _, target := range e.Targets {
				h, p, err := net.SplitHostPort(target)
				if err != nil || p != metricsPort {
					t.Errorf("prometheus-targets/%s.yml: target %q is not <service>:%s", job, target, metricsPort)
				}
				got = append(got, h)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("prometheus-targets/%s.yml targets %q, want %q", job, got, want)
		}
	}
}
