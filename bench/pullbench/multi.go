package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The multi-platform scenario: skopeo pulls the linux/amd64 platform of an
// image with several platforms, cold, through `regwarm run` (embedded NATS
// and a worker that warms every platform), through the docker-registry
// proxy, and directly. Besides the pull time it records the upstream
// requests of the pull plus all warming, and for regwarm the time from the
// end of the pull until every blob of every platform is in its store.

// multiImage is an OCI index over one image per platform, tagged.
type multiImage struct {
	repo, tag string
	index     content
	plats     []*image // the first is linux/amd64, the platform pulled
}

// multiPlatforms are the platforms of the multi-platform image.
var multiPlatforms = []ocispec.Platform{
	{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}, {OS: "linux", Architecture: "s390x"},
}

// buildMulti writes an image with one manifest per platform of
// multiPlatforms, each with its own layers of layerSizes.
func buildMulti(dir, repo string, seed uint64, layerSizes []int64) (*multiImage, error) {
	m := &multiImage{repo: repo, tag: "v1"}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for i, plat := range multiPlatforms {
		im, err := buildPlatformImage(filepath.Join(dir, plat.Architecture), repo, seed*100+uint64(i), plat, layerSizes)
		if err != nil {
			return nil, err
		}
		m.plats = append(m.plats, im)
		d := im.manifest.desc
		d.Platform = &plat
		idx.Manifests = append(idx.Manifests, d)
	}
	var err error
	m.index, err = writeJSON(dir, "index.json", ocispec.MediaTypeImageIndex, idx)
	return m, err
}

// push uploads every platform (blobs, manifest by digest), then the index
// by tag.
func (m *multiImage) push(ctx context.Context, addr string) error {
	client := &http.Client{Timeout: 5 * time.Minute}
	base := "http://" + addr + "/v2/" + m.repo
	for _, im := range m.plats {
		if err := im.pushManifest(ctx, client, base); err != nil {
			return err
		}
	}
	return pushManifest(ctx, client, base, m.index, m.tag)
}

// allBlobs lists the config and layers of every platform.
func (m *multiImage) allBlobs() []content {
	var out []content
	for _, im := range m.plats {
		out = append(out, im.blobs()...)
	}
	return out
}

// manifests counts the index and the platform manifests.
func (m *multiImage) manifests() int { return 1 + len(m.plats) }

// multiPull is one cold pull of the multi-platform image.
type multiPull struct {
	wall     time.Duration
	local    time.Duration // pull end until every blob is stored; -1: not measured
	requests int           // upstream requests of the pull and all warming
	cpu      time.Duration // regwarm's CPU time (user+system) until the pull ended; -1: not measured
	cpuAll   time.Duration // regwarm's CPU time until every platform was stored (or the pull ended without warming)
}

// multiResults are the multi-platform pulls per target, on the shared
// CPUs and (with pinning) with the cache on its own CPU.
type multiResults struct {
	shared, pinned map[string][]multiPull
}

// skopeoPullPlatform copies m's linux/amd64 platform from host into a new
// OCI layout and checks its blobs.
func (e *env) skopeoPullPlatform(m *multiImage, host string) (time.Duration, error) {
	out, err := e.dir("out")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(out) }() // scratch output; a leftover is harmless
	ref := host + "/" + m.repo + ":" + m.tag
	argv := append(e.onCPU(clientCPU), "skopeo", "--override-os", "linux", "--override-arch", "amd64", "copy", "--quiet",
		"--src-tls-verify=false", "docker://"+ref, "oci:"+out+":"+m.tag)
	cmd := exec.CommandContext(e.ctx, argv[0], argv[1:]...)
	start := time.Now()
	msg, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("skopeo copy %s: %v: %s", ref, err, msg)
	}
	for _, b := range m.plats[0].blobs() {
		fi, err := os.Stat(filepath.Join(out, "blobs", "sha256", b.desc.Digest.Encoded()))
		if err != nil || fi.Size() != b.desc.Size {
			return 0, fmt.Errorf("skopeo copy %s: blob %s missing or wrong size", ref, b.desc.Digest)
		}
	}
	return wall, nil
}

// multiLocalMax bounds the wait for every platform to be stored.
const multiLocalMax = 30 * time.Second

// waitStored waits until every blob of m is in regwarm's store under dir
// and returns how long that took.
func (e *env) waitStored(dir string, m *multiImage) (time.Duration, error) {
	start := time.Now()
	for {
		missing := 0
		for _, b := range m.allBlobs() {
			hex := b.desc.Digest.Encoded()
			if _, err := os.Stat(filepath.Join(dir, "data", "store", "blobs", "sha256", hex[:2], hex)); err != nil {
				missing++
			}
		}
		if missing == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > multiLocalMax {
			return 0, fmt.Errorf("%d of %d blobs still not stored after %v", missing, len(m.allBlobs()), multiLocalMax)
		}
		select {
		case <-e.ctx.Done():
			return 0, e.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// multiCold pulls m's linux/amd64 platform cold, runs times per target.
func (e *env) multiCold(out map[string][]multiPull, m *multiImage, runs int) error {
	for run := range runs {
		for _, t := range rotated(targets, run) {
			var s *server
			var err error
			switch t {
			case targetRegwarm:
				s, err = e.startRegwarmAs("run")
			case targetRegwarmServe:
				s, err = e.startRegwarmAs("serve")
			default:
				s, err = e.startCache(t)
			}
			if err != nil {
				return err
			}
			mk, err := e.mark()
			if err == nil {
				var p multiPull
				p, err = e.measuredMulti(m, s, mk, t)
				out[t] = append(out[t], p)
				if err == nil {
					progress("multi-platform %s run %d: cold %v, all platforms local %v after, %d upstream requests, regwarm CPU %v (pull) %v (all)", t, run+1,
						p.wall.Round(time.Millisecond), p.local.Round(time.Millisecond), p.requests, p.cpu, p.cpuAll)
				}
			}
			e.stopServer(s)
			if err != nil {
				return fmt.Errorf("%s multi-platform pull: %w", t, err)
			}
		}
	}
	return nil
}

func (e *env) measuredMulti(m *multiImage, s *server, mk logMark, t string) (multiPull, error) {
	p := multiPull{local: -1, cpu: -1, cpuAll: -1}
	cpu0 := s.cpuTime()
	var err error
	if p.wall, err = e.skopeoPullPlatform(m, s.addr); err != nil {
		return p, err
	}
	if cpu0 >= 0 {
		p.cpu = s.cpuTime() - cpu0
		p.cpuAll = p.cpu
	}
	if t == targetRegwarm {
		if p.local, err = e.waitStored(s.data, m); err != nil {
			return p, err
		}
		if cpu0 >= 0 {
			p.cpuAll = s.cpuTime() - cpu0
		}
	}
	up, err := e.since(mk)
	p.requests = up.requests
	return p, err
}

// multiScenario runs the multi-platform pulls, shared and (with pin)
// pinned.
func (e *env) multiScenario(m *multiImage, runs int, pin bool) (*multiResults, error) {
	res := &multiResults{shared: map[string][]multiPull{}}
	if err := e.multiCold(res.shared, m, runs); err != nil {
		return res, err
	}
	if !pin {
		return res, nil
	}
	res.pinned = map[string][]multiPull{}
	return res, e.withPinning(func() error { return e.multiCold(res.pinned, m, runs) })
}

// Targets of the multi-platform cold pull, against direct.
const (
	maxMultiRatioShared = 1.3
	maxMultiRatioOwn    = 1.1
	maxLocal            = 5 * time.Second
)

// render writes the multi-platform table and returns the targets missed.
func (r *multiResults) render(p func(string, ...any), m *multiImage) []string {
	p("\nMulti-platform cold pull: skopeo `--override-os linux --override-arch amd64` pulls one platform of `%s:%s` (an index over %d platforms, %d layers of %s each per platform: %d distinct manifests and %d blobs) from a fresh cache. **regwarm** is `regwarm run` (embedded NATS, a worker that warms every platform); **local after** is the time from the end of the pull until every blob of every platform is in regwarm's store; **upstream requests** counts the upstream's access log for the pull and all warming (target: at most manifests + blobs + 2 = %d). Medians.\n\n",
		m.repo, m.tag, len(m.plats), len(m.plats[0].layers), layerSizes(m.plats[0]), m.manifests(), len(m.allBlobs()), m.manifests()+len(m.allBlobs())+2)
	p("| CPUs | direct | regwarm | ÷ direct | proxy | proxy ÷ direct | regwarm local after | regwarm upstream requests | proxy upstream requests | target | met |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	var missed []string
	row := func(cpus string, runs map[string][]multiPull, limit float64) {
		if runs == nil {
			return
		}
		wall := per(runs, func(x multiPull) float64 { return float64(x.wall) / float64(time.Millisecond) })
		local := per(runs, func(x multiPull) float64 { return float64(x.local) / float64(time.Millisecond) })
		reqs := per(runs, func(x multiPull) float64 { return float64(x.requests) })
		rw := ratio(wall, targetRegwarm, targetDirect)
		met := "yes"
		if rw > limit || local[targetRegwarm] > float64(maxLocal/time.Millisecond) ||
			reqs[targetRegwarm] > float64(m.manifests()+len(m.allBlobs())+2) {
			met = "**NO**"
			missed = append(missed, "multi-platform cold pull ("+cpus+")")
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | ≤ %.1f× direct, local ≤ %v | %s |\n", cpus,
			ms(wall[targetDirect]), ms(wall[targetRegwarm]), fmtRatio(rw), ms(wall[targetProxy]),
			fmtRatio(ratio(wall, targetProxy, targetDirect)), localMS(local[targetRegwarm]), count(reqs[targetRegwarm]),
			count(reqs[targetProxy]), limit, maxLocal, met)
	}
	row(cpusShared, r.shared, maxMultiRatioShared)
	row(cpusOwn, r.pinned, maxMultiRatioOwn)
	return missed
}

// localMS formats a "local after" median; negative: not measured.
func localMS(v float64) string {
	if v < 0 {
		return "–"
	}
	return ms(v)
}

// print writes the medians for -only multi.
func (r *multiResults) print() {
	for _, set := range []struct {
		name string
		runs map[string][]multiPull
	}{{cpusShared, r.shared}, {cpusOwn, r.pinned}} {
		if set.runs == nil {
			continue
		}
		var b strings.Builder
		for _, t := range targets {
			wall := per(set.runs, func(x multiPull) float64 { return float64(x.wall) / float64(time.Millisecond) })
			local := per(set.runs, func(x multiPull) float64 { return float64(x.local) / float64(time.Millisecond) })
			reqs := per(set.runs, func(x multiPull) float64 { return float64(x.requests) })
			cpu := per(set.runs, func(x multiPull) float64 { return float64(x.cpu) / float64(time.Millisecond) })
			cpuAll := per(set.runs, func(x multiPull) float64 { return float64(x.cpuAll) / float64(time.Millisecond) })
			fmt.Fprintf(&b, "%s %-13s multi-platform cold median %s (%s direct), local after %s, upstream requests %s, cache CPU %s during the pull, %s until local\n", set.name, t,
				ms(wall[t]), fmtRatio(ratio(wall, t, targetDirect)), localMS(local[t]), count(reqs[t]), localMS(cpu[t]), localMS(cpuAll[t]))
		}
		fmt.Print(b.String())
	}
}
