package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// pull is one measured client pull and what the upstream served for it.
type pull struct {
	wall time.Duration
	up   traffic
}

// bigPull is a cold pull of the large image with the cache's memory use.
type bigPull struct {
	pull
	idleRSS, peakRSS int64
	cpu              time.Duration // the cache's CPU time during the pull; -1: not measured
}

// concPull is one round of concurrent cold pulls.
type concPull struct {
	pull
	maxGETs  int     // most upstream GETs of one blob
	meanGETs float64 // upstream GETs per blob, averaged over the image's blobs
}

// results holds every measurement, per target.
type results struct {
	cold, warm map[string][]pull
	conc       map[string][]concPull
	big        map[string][]bigPull
	throughput map[string][]float64 // MB/s per round; also "servefile"
	pinned     *results             // the cold pulls again, with the cache on its own CPU
	// firstSmall and firstBig time the first byte of a cold blob: the
	// small image's largest layer and the large image's layer.
	firstSmall, firstBig map[string][]firstByte
	// proxyFailures are runs the docker-registry proxy failed (it answers
	// some concurrent cold pulls with 500): noted, not fatal.
	proxyFailures []string
}

func newResults() *results {
	return &results{
		cold: map[string][]pull{}, warm: map[string][]pull{}, conc: map[string][]concPull{},
		big: map[string][]bigPull{}, throughput: map[string][]float64{},
		firstSmall: map[string][]firstByte{}, firstBig: map[string][]firstByte{},
	}
}

// targets is the order targets are measured in; each round rotates it so
// that no target always goes first.
var targets = []string{targetDirect, targetRegwarm, targetProxy}

// floorTargets are measured in the cold pull scenarios only (with -relay):
// bench/relay, the least work a pass-through does.
var floorTargets = []string{targetRelay, targetRelayVerify, targetRelayStore}

// coldTargets are the targets of the cold pull scenarios.
func (e *env) coldTargets() []string {
	if e.relay == "" {
		return targets
	}
	return append(slices.Clone(targets), floorTargets...)
}

func rotated(list []string, round int) []string {
	out := make([]string, len(list))
	for i := range list {
		out[i] = list[(i+round)%len(list)]
	}
	return out
}

// With pinning, the client and the upstream share one CPU and the cache
// (or relay, or proxy) has the other, as if it ran on its own host.
const (
	clientCPU = "0"
	cacheCPU  = "1"
)

// onCPU returns the taskset prefix that runs a command on cpu, or nothing
// when pinning is off.
func (e *env) onCPU(cpu string) []string {
	if !e.pinned {
		return nil
	}
	return []string{"taskset", "-c", cpu}
}

// pinUpstream moves every thread of the upstream to the client's CPU, or
// back to all CPUs.
func (e *env) pinUpstream(on bool) error {
	cpus := fmt.Sprintf("0-%d", runtime.NumCPU()-1)
	if on {
		cpus = clientCPU
	}
	out, err := exec.CommandContext(e.ctx, "taskset", "-a", "-p", "-c", cpus, strconv.Itoa(e.upstream.proc.pid())).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset: %v: %s", err, out)
	}
	return nil
}

// pinnedCold repeats the cold pulls with the cache on its own CPU.
func (e *env) pinnedCold(md *meta, runs, bigRuns int) (*results, error) {
	res := newResults()
	err := e.withPinning(func() error {
		if err := e.coldWarm(res, md.small, runs); err != nil {
			return err
		}
		servers, err := e.bigCold(res, md.big, bigRuns)
		e.stopServers(servers)
		return err
	})
	return res, err
}

// withPinning runs fn with the client and upstream on clientCPU and the
// servers it starts on cacheCPU.
func (e *env) withPinning(fn func() error) error {
	if err := e.pinUpstream(true); err != nil {
		return err
	}
	e.pinned = true
	defer func() {
		e.pinned = false
		_ = e.pinUpstream(false)
	}()
	return fn()
}

// skopeoPull copies the image's linux/amd64 platform from host into a new
// OCI layout and checks that every blob arrived.
func (e *env) skopeoPull(im *image, host string) (time.Duration, error) {
	out, err := e.dir("out")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(out) }() // scratch output; a leftover is harmless
	argv := append(e.onCPU(clientCPU), "skopeo", "copy", "--quiet", "--src-tls-verify=false",
		"docker://"+im.ref(host), "oci:"+out+":"+im.tag)
	cmd := exec.CommandContext(e.ctx, argv[0], argv[1:]...)
	start := time.Now()
	msg, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("skopeo copy %s: %v: %s", im.ref(host), err, msg)
	}
	for _, b := range im.blobs() {
		fi, err := os.Stat(filepath.Join(out, "blobs", "sha256", b.desc.Digest.Encoded()))
		if err != nil || fi.Size() != b.desc.Size {
			return 0, fmt.Errorf("skopeo copy %s: blob %s missing or wrong size", im.ref(host), b.desc.Digest)
		}
	}
	return wall, nil
}

// measuredPull pulls once and returns the time and the upstream traffic.
func (e *env) measuredPull(im *image, host string) (pull, error) {
	m, err := e.mark()
	if err != nil {
		return pull{}, err
	}
	wall, err := e.skopeoPull(im, host)
	if err != nil {
		return pull{}, err
	}
	up, err := e.since(m)
	return pull{wall: wall, up: up}, err
}

// coldWarm pulls the image from a fresh cache (cold), then again (warm),
// runs times per target.
func (e *env) coldWarm(res *results, im *image, runs int) error {
	for run := range runs {
		for _, t := range rotated(e.coldTargets(), run) {
			s, err := e.startCache(t)
			if err != nil {
				return err
			}
			cold, err := e.measuredPull(im, s.addr)
			if err != nil {
				e.stopServer(s)
				return fmt.Errorf("%s cold pull: %w", t, err)
			}
			warm, err := e.measuredPull(im, s.addr)
			e.stopServer(s)
			if err != nil {
				return fmt.Errorf("%s warm pull: %w", t, err)
			}
			res.cold[t] = append(res.cold[t], cold)
			res.warm[t] = append(res.warm[t], warm)
			progress("cold/warm %s run %d: cold %v (%d upstream requests), warm %v", t, run+1,
				cold.wall.Round(time.Millisecond), cold.up.requests, warm.wall.Round(time.Millisecond))
		}
	}
	return nil
}

// concurrent starts n cold pulls at once against a fresh cache, runs times
// per target.
func (e *env) concurrent(res *results, im *image, n, runs int) error {
	for run := range runs {
		for _, t := range rotated(targets, run) {
			s, err := e.startCache(t)
			if err != nil {
				return err
			}
			m, err := e.mark()
			if err != nil {
				e.stopServer(s)
				return err
			}
			start := time.Now()
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() { _, errs[i] = e.skopeoPull(im, s.addr) })
			}
			wg.Wait()
			wall := time.Since(start)
			up, terr := e.since(m)
			e.stopServer(s)
			if err := errors.Join(append(errs, terr)...); err != nil {
				if t == targetProxy && terr == nil {
					msg := fmt.Sprintf("%d concurrent cold pulls, run %d: %v", n, run+1, firstLine(err))
					res.proxyFailures = append(res.proxyFailures, msg)
					progress("proxy failed (noted in the report): %s", msg)
					continue
				}
				return fmt.Errorf("%s concurrent pulls: %w", t, err)
			}
			c := concPull{pull: pull{wall: wall, up: up}}
			total := 0
			for _, b := range im.blobs() {
				g := up.blobGETs[b.desc.Digest.String()]
				c.maxGETs = max(c.maxGETs, g)
				total += g
			}
			c.meanGETs = float64(total) / float64(len(im.blobs()))
			res.conc[t] = append(res.conc[t], c)
			progress("%d concurrent %s run %d: %v, upstream GETs per blob max %d mean %.2f", n, t, run+1,
				wall.Round(time.Millisecond), c.maxGETs, c.meanGETs)
		}
	}
	return nil
}

// firstLine returns the first line of err's message, without skopeo's
// log prefix noise beyond it.
func firstLine(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return msg
}

// bigCold pulls the large image from a fresh cache with the cache's peak
// RSS above idle, runs times per target. The caches of the last run stay
// up (returned) for the throughput measurement.
func (e *env) bigCold(res *results, im *image, runs int) (map[string]*server, error) {
	last := map[string]*server{}
	for run := range runs {
		for _, t := range rotated(e.coldTargets(), run) {
			s, err := e.startCache(t)
			if err != nil {
				return last, err
			}
			p, err := e.measuredBigPull(im, s)
			if err != nil {
				e.stopServer(s)
				return last, fmt.Errorf("%s cold pull of %s: %w", t, im.repo, err)
			}
			res.big[t] = append(res.big[t], p)
			progress("cold %s %s run %d: %v, peak RSS %s above idle %s", im.repo, t, run+1,
				p.wall.Round(time.Millisecond), mib(p.peakRSS-p.idleRSS), mib(p.idleRSS))
			if run == runs-1 {
				last[t] = s
			} else {
				e.stopServer(s)
			}
		}
	}
	return last, nil
}

func (e *env) measuredBigPull(im *image, s *server) (bigPull, error) {
	if err := idle(s.proc); err != nil {
		return bigPull{}, err
	}
	// clear_refs sets VmHWM to the current RSS: the idle baseline.
	if err := resetPeak(s.proc.pid()); err != nil {
		return bigPull{}, fmt.Errorf("reset peak RSS: %w", err)
	}
	_, idleRSS, err := memStatus(s.proc.pid())
	if err != nil {
		return bigPull{}, err
	}
	// VmHWM can miss a peak that the Go runtime already returned with
	// madvise, so VmRSS is sampled as well.
	stop := make(chan struct{})
	sampled := make(chan int64)
	go func() {
		var peak int64
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sampled <- peak
				return
			case <-tick.C:
				if rss, _, err := memStatus(s.proc.pid()); err == nil {
					peak = max(peak, rss)
				}
			}
		}
	}()
	cpu0 := s.cpuTime()
	p, err := e.measuredPull(im, s.addr)
	cpu := time.Duration(-1)
	if cpu0 >= 0 {
		cpu = s.cpuTime() - cpu0
	}
	close(stop)
	peak := <-sampled
	if err != nil {
		return bigPull{}, err
	}
	_, hwm, err := memStatus(s.proc.pid())
	if err != nil {
		return bigPull{}, err
	}
	return bigPull{pull: p, idleRSS: idleRSS, peakRSS: max(hwm, peak), cpu: cpu}, nil
}

// throughput GETs a warm blob from each server in rounds (interleaved, so
// drift hits all alike) and records MB/s per round.
func (e *env) throughput(res *results, servers map[string]*server, paths map[string]string, size int64, rounds int, each time.Duration) error {
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 2}}
	defer client.CloseIdleConnections()
	buf := make([]byte, 1<<20)
	names := []string{"servefile", targetDirect, targetRegwarm, targetProxy}
	for _, name := range names { // warm-up: page cache, connections
		if _, err := getBlob(client, "http://"+servers[name].addr+paths[name], size, buf); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	for round := range rounds {
		for i := range names {
			name := names[(i+round)%len(names)]
			url := "http://" + servers[name].addr + paths[name]
			var n int64
			start := time.Now()
			for reqs := 0; reqs < 3 || time.Since(start) < each; reqs++ {
				m, err := getBlob(client, url, size, buf)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				n += m
			}
			mbps := float64(n) / time.Since(start).Seconds() / 1e6
			res.throughput[name] = append(res.throughput[name], mbps)
			progress("warm blob throughput %s round %d: %.0f MB/s", name, round+1, mbps)
		}
	}
	return nil
}

// getBlob GETs url, discards the body in large reads and checks its length.
func getBlob(client *http.Client, url string, size int64, buf []byte) (int64, error) {
	res, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var n int64
	for {
		m, err := res.Body.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err
		}
	}
	if res.StatusCode != http.StatusOK || n != size {
		return n, fmt.Errorf("GET %s: status %d with %d bytes, want 200 with %d", url, res.StatusCode, n, size)
	}
	return n, nil
}

// progress prints a line to stderr while the benchmark runs.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pullbench: "+format+"\n", args...)
}
