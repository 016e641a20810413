// Command pullbench measures image pulls through regwarm against the same
// pulls through Debian's docker-registry in proxy mode and directly from the
// upstream (a plain docker-registry), all in one run, and writes the results
// into docs/benchmarks.md. bench/pull.sh builds and runs it; see there.
//
// Scenarios, each against a fresh, empty cache per run:
//   - cold and warm single-platform pulls of a small image (skopeo), with
//     the upstream requests and bytes they caused (upstream access log);
//   - the time to the first byte of a cold blob GET;
//   - concurrent cold pulls, with upstream GETs per blob;
//   - a cold pull of a 256 MiB layer, with the cache's peak RSS above idle;
//   - warm throughput of that blob vs http.ServeFile of the same file;
//   - with -relay, the cold pulls through bench/relay (the floor), and with
//     -pin all cold pulls again with the cache on its own CPU;
//   - a cold pull of one platform of a three-platform image through
//     `regwarm run` (a worker warms every platform), the proxy and direct:
//     time, upstream requests, and when every platform is local (multi.go);
//   - cold and warm pulls with the upstream behind a shaping proxy that
//     adds a round trip and caps the bandwidth, a WAN link (wan.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pullbench:", err)
		os.Exit(1)
	}
}

type options struct {
	regwarm, servefile, relay, work, doc, command, goBench string

	only, keepLogs                              string
	runs, concurrent, concRuns, bigRuns, rounds int
	each                                        time.Duration
	bigMiB                                      int64
	logLevel                                    string
	pin                                         bool
	wanRTT                                      time.Duration
	wanMBps                                     float64
}

func parseFlags() (options, error) {
	var o options
	flag.StringVar(&o.regwarm, "regwarm", "", "regwarm binary (required)")
	flag.StringVar(&o.servefile, "servefile", "", "bench/servefile binary (required)")
	flag.StringVar(&o.relay, "relay", "", "bench/relay binary: also measure the cold pulls through it (the floor); empty: skip")
	flag.StringVar(&o.work, "work", "", "empty scratch directory (required)")
	flag.StringVar(&o.doc, "doc", "docs/benchmarks.md", "markdown file whose generated section is rewritten; empty: print to stdout")
	flag.StringVar(&o.command, "command", "bench/pull.sh", "the command line recorded in the report")
	flag.StringVar(&o.goBench, "gobench", "", "file with `go test -bench` output to include in the report")
	flag.IntVar(&o.runs, "runs", 7, "cold/warm pull runs per target")
	flag.IntVar(&o.concurrent, "concurrent", 10, "pulls started at once in the concurrency scenario")
	flag.IntVar(&o.concRuns, "conc-runs", 3, "runs of the concurrency scenario per target")
	flag.IntVar(&o.bigRuns, "big-runs", 7, "cold pulls of the large image per target")
	flag.IntVar(&o.rounds, "rounds", 5, "throughput rounds per server")
	flag.DurationVar(&o.each, "each", 1500*time.Millisecond, "minimum duration of one throughput round")
	flag.Int64Var(&o.bigMiB, "big-mib", 256, "payload of the large image's layer in MiB")
	flag.StringVar(&o.only, "only", "", "`cold`, `big`, `first-byte`, `multi` or `wan`: run only the cold/warm small-image pulls, the cold large-image pulls, the cold blob first-byte times (of the targets in -targets), the multi-platform cold pulls with warming, or the pulls over the shaped WAN link, and print their times (no report)")
	flag.DurationVar(&o.wanRTT, "wan-rtt", 40*time.Millisecond, "round trip the WAN scenario's shaper adds")
	flag.Float64Var(&o.wanMBps, "wan-mbps", 100, "bandwidth of the WAN scenario's link, MB/s per direction")
	flag.BoolVar(&o.pin, "pin", true, "also measure the cold pulls with the client and upstream on CPU 0 and the cache on CPU 1 (needs taskset and 2 CPUs)")
	flag.StringVar(&o.keepLogs, "keep-logs", "", "directory to copy every regwarm log into before its data is removed")
	flag.StringVar(&o.logLevel, "log-level", "info", "regwarm's log level (debug logs every request with its duration)")
	flag.Func("targets", "with -only: comma-separated targets (direct, regwarm, proxy; with -only multi also regwarm-serve: regwarm without warming)", func(v string) error {
		targets = strings.Split(v, ",")
		return nil
	})
	flag.Parse()
	if o.regwarm == "" || o.servefile == "" || o.work == "" {
		return o, errors.New("-regwarm, -servefile and -work are required")
	}
	if o.only != "" && o.only != "cold" && o.only != "big" && o.only != "first-byte" && o.only != "multi" && o.only != "wan" {
		return o, fmt.Errorf("-only %q: cold, big, first-byte, multi or wan", o.only)
	}
	if o.runs < 1 || o.concurrent < 1 || o.concRuns < 1 || o.bigRuns < 1 || o.rounds < 1 || o.bigMiB < 1 {
		return o, errors.New("counts must be positive")
	}
	for _, tool := range []string{"docker-registry", "skopeo"} {
		if _, err := exec.LookPath(tool); err != nil {
			return o, fmt.Errorf("%s is not installed (apt-get install docker-registry skopeo)", tool)
		}
	}
	return o, nil
}

func run() error {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ps := &procs{}
	defer ps.stopAll()

	md := &meta{start: time.Now(), command: o.command, machine: machine(), versions: versions(ctx, o.regwarm), each: o.each,
		loadStart: loadAvg()}
	md.runs.cold, md.runs.conc, md.runs.big, md.runs.rounds, md.runs.concurrent = o.runs, o.concRuns, o.bigRuns, o.rounds, o.concurrent
	if o.goBench != "" {
		b, err := os.ReadFile(o.goBench)
		if err != nil {
			return err
		}
		md.goBench = string(b)
	}

	e := &env{ctx: ctx, work: o.work, regwarm: o.regwarm, servefile: o.servefile, procs: ps, relay: o.relay, keepLogs: o.keepLogs, logLevel: o.logLevel}
	e.upstream, err = e.startRegistry(targetDirect, "")
	if err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	e.accessLog = filepath.Join(e.upstream.data, "access.log")

	start := time.Now()
	md.small, err = buildImage(filepath.Join(o.work, "img-small"), "bench/small", 1, []int64{2 << 20, 3 << 20, 4 << 20, 5 << 20, 6 << 20})
	if err != nil {
		return err
	}
	md.big, err = buildImage(filepath.Join(o.work, "img-big"), "bench/big", 2, []int64{o.bigMiB << 20})
	if err != nil {
		return err
	}
	for _, im := range []*image{md.small, md.big} {
		if err := im.push(ctx, e.upstream.addr); err != nil {
			return fmt.Errorf("push %s: %w", im.repo, err)
		}
	}
	multi, err := buildMulti(filepath.Join(o.work, "img-multi"), "bench/multi", 3, []int64{3 << 20, 4 << 20, 5 << 20})
	if err != nil {
		return err
	}
	if err := multi.push(ctx, e.upstream.addr); err != nil {
		return fmt.Errorf("push %s: %w", multi.repo, err)
	}
	progress("images built and pushed in %v", time.Since(start).Round(time.Millisecond))
	// One unmeasured pull of each image warms the upstream's page cache
	// and the client's first-run costs.
	for _, im := range []*image{md.small, md.big} {
		if _, err := e.skopeoPull(im, e.upstream.addr); err != nil {
			return err
		}
	}

	pin := o.pin && runtime.NumCPU() >= 2
	if pin {
		if _, err := exec.LookPath("taskset"); err != nil {
			progress("taskset not found: the pinned cold pulls are skipped")
			pin = false
		}
	}
	if o.only == "multi" {
		mr, err := e.multiScenario(multi, o.runs, pin)
		if err != nil {
			return err
		}
		mr.print()
		return nil
	}
	if o.only == "wan" {
		wr, err := e.wanScenario(md.small, o.runs, o.wanRTT, o.wanMBps)
		if err != nil {
			return err
		}
		wr.print()
		return nil
	}
	res := newResults()
	if o.only == "first-byte" {
		if err := e.firstBytes(res, md, o.runs); err != nil {
			return err
		}
		for _, t := range e.coldTargets() {
			fmt.Printf("%-12s first byte: small layer %v, large layer %v\n", t,
				medianDur(firsts(res.firstSmall[t])).Round(10*time.Microsecond), medianDur(firsts(res.firstBig[t])).Round(10*time.Microsecond))
		}
		return nil
	}
	if o.only == "big" {
		servers, err := e.bigCold(res, md.big, o.bigRuns)
		e.stopServers(servers)
		if err != nil {
			return err
		}
		for _, t := range e.coldTargets() {
			var walls, cpus []time.Duration
			for _, p := range res.big[t] {
				walls = append(walls, p.wall)
				if p.cpu >= 0 {
					cpus = append(cpus, p.cpu)
				}
			}
			cpu := "-"
			if len(cpus) > 0 {
				cpu = medianDur(cpus).Round(time.Millisecond).String()
			}
			fmt.Printf("%-8s cold large median %v, cache CPU median %s\n", t, medianDur(walls).Round(time.Millisecond), cpu)
		}
		return nil
	}
	if err := e.coldWarm(res, md.small, o.runs); err != nil {
		return err
	}
	if o.only == "cold" {
		for _, t := range e.coldTargets() {
			var cold, warm []time.Duration
			for i := range res.cold[t] {
				cold = append(cold, res.cold[t][i].wall)
				warm = append(warm, res.warm[t][i].wall)
			}
			fmt.Printf("%-8s cold median %v  warm median %v\n", t, medianDur(cold).Round(100*time.Microsecond), medianDur(warm).Round(100*time.Microsecond))
		}
		return nil
	}
	if err := e.firstBytes(res, md, o.runs); err != nil {
		return err
	}
	if err := e.concurrent(res, md.small, o.concurrent, o.concRuns); err != nil {
		return err
	}
	servers, err := e.bigCold(res, md.big, o.bigRuns)
	defer e.stopServers(servers) // a map: servers added below are stopped too
	if err != nil {
		return err
	}
	if pin {
		progress("pinned: client and upstream on CPU %s, caches on CPU %s", clientCPU, cacheCPU)
		if res.pinned, err = e.pinnedCold(md, o.runs, o.bigRuns); err != nil {
			return fmt.Errorf("pinned cold pulls: %w", err)
		}
	}
	layer := md.big.layers[0].desc.Digest
	rw := servers[targetRegwarm]
	file := filepath.Join(rw.data, "data", "store", "blobs", string(layer.Algorithm()), layer.Encoded()[:2], layer.Encoded())
	sf, err := e.startServeFile(file)
	if err != nil {
		return fmt.Errorf("servefile of regwarm's stored blob: %w", err)
	}
	servers["servefile"] = sf
	blobPath := "/v2/" + md.big.repo + "/blobs/" + layer.String()
	paths := map[string]string{"servefile": "/blob", targetDirect: blobPath, targetRegwarm: blobPath, targetProxy: blobPath}
	if err := e.throughput(res, servers, paths, md.big.layers[0].desc.Size, o.rounds, o.each); err != nil {
		return err
	}

	mr, err := e.multiScenario(multi, o.runs, pin)
	if err != nil {
		return fmt.Errorf("multi-platform pulls: %w", err)
	}
	wr, err := e.wanScenario(md.small, o.runs, o.wanRTT, o.wanMBps)
	if err != nil {
		return fmt.Errorf("WAN pulls: %w", err)
	}

	md.duration = time.Since(md.start)
	md.loadEnd = loadAvg()
	section, missed := res.render(md)
	var extra strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&extra, format, args...) }
	missed = append(missed, mr.render(p, multi)...)
	missed = append(missed, wr.render(p, md.small)...)
	section = strings.Replace(section, endMarker, extra.String()+"\n"+endMarker, 1)
	if o.doc == "" {
		fmt.Print(section)
	} else if err := writeDoc(o.doc, section); err != nil {
		return err
	} else {
		progress("wrote %s", o.doc)
	}
	if len(missed) > 0 {
		progress("regwarm missed: %s", strings.Join(missed, "; "))
	}
	progress("done in %v", md.duration.Round(time.Second))
	return nil
}

// machine describes the host: CPUs, model, memory, kernel.
func machine() string {
	model, mem := "", ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				var kb int64
				if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb); err == nil {
					mem = fmt.Sprintf("%.1f GiB RAM", float64(kb)/(1<<20))
				}
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(b))
	}
	parts := []string{fmt.Sprintf("`nproc` = %d", runtime.NumCPU())}
	for _, s := range []string{model, mem, kernel} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ", ")
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// versions reports the versions of everything measured.
func versions(ctx context.Context, regwarm string) []string {
	first := func(name string, args ...string) string {
		out, err := exec.CommandContext(ctx, name, args...).Output()
		if err != nil {
			return name + " (version unknown)"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	rw, _ := exec.CommandContext(ctx, regwarm, "version").Output()
	rwv := strings.Join(strings.Fields(string(rw)), " ")
	return []string{rwv, first("docker-registry", "--version"), first("skopeo", "--version"), runtime.Version() + " (pullbench)"}
}
