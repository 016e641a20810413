// Command s3bench compares regwarm on the S3 store with regwarm on the
// filesystem store and with the S3 server itself, in one run:
//
//   - warm 64 MiB blob GET through regwarm on S3 vs a direct signed GET of
//     the same object from the S3 server (versitygw), as a throughput ratio;
//   - manifest GET by tag on S3 vs on the filesystem, mean latency;
//   - cold pull (manifest by tag + every blob, fetched from a
//     docker-registry upstream) on S3 vs on the filesystem.
//
// Run it from the repository root (bench/s3.sh builds and runs it); it
// needs docker-registry and versitygw. Every server it starts listens on a
// free loopback port and is stopped, by pid, when it ends.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/regwarm/regwarm/internal/store/s3test"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "s3bench:", err)
		os.Exit(1)
	}
}

type bench struct {
	regwarm string
	work    string
	procs   []*exec.Cmd
	client  *http.Client
}

func run() error {
	var b bench
	var blobMiB, rounds, manifestGets, coldRuns, coldLayers, coldLayerMiB int
	flag.StringVar(&b.regwarm, "regwarm", "", "regwarm binary (required)")
	flag.StringVar(&b.work, "work", "", "empty scratch directory (required)")
	flag.IntVar(&blobMiB, "blob-mib", 64, "size of the warm blob")
	flag.IntVar(&rounds, "rounds", 5, "warm blob GETs per target")
	flag.IntVar(&manifestGets, "manifest-gets", 300, "manifest GETs by tag per target")
	flag.IntVar(&coldRuns, "cold-runs", 3, "cold pulls per target")
	flag.IntVar(&coldLayers, "cold-layers", 4, "layers of the cold image")
	flag.IntVar(&coldLayerMiB, "cold-layer-mib", 8, "size of each cold layer")
	flag.Parse()
	if b.regwarm == "" || b.work == "" {
		return errors.New("-regwarm and -work are required")
	}
	b.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}}
	defer b.stopAll()

	srv, err := s3test.Start()
	if err != nil {
		return err
	}
	defer srv.Stop()
	ctx := context.Background()
	if err := srv.MakeBucket(ctx, "bench"); err != nil {
		return err
	}
	up, err := b.startRegistry()
	if err != nil {
		return err
	}
	s3Storage := fmt.Sprintf("storage: {s3: {bucket: bench, endpoint: %q, path_style: true, access_key_id_env: S3BENCH_KEY, secret_access_key_env: S3BENCH_SECRET}}\n", srv.Endpoint)
	env := []string{"S3BENCH_KEY=" + srv.AccessKey, "S3BENCH_SECRET=" + srv.SecretKey}
	onS3, err := b.startRegwarm("s3", up, s3Storage, env)
	if err != nil {
		return err
	}
	onFS, err := b.startRegwarm("fs", up, "", nil)
	if err != nil {
		return err
	}
	fmt.Printf("# s3bench: regwarm on S3 (versitygw %s) vs on the filesystem; %d CPUs\n\n", srv.Endpoint, runtime.NumCPU())

	// Warm blob GET: regwarm on S3 vs the S3 server directly.
	blob := random(1, blobMiB<<20)
	d := digestOf(blob)
	if err := b.pushBlob("http://"+onS3, "local/bench/warm", blob); err != nil {
		return err
	}
	mc, err := srv.Client()
	if err != nil {
		return err
	}
	key := "blobs/sha256/" + d[len("sha256:"):]
	core := minio.Core{Client: mc}
	direct := func() (int64, error) { // one signed GET, its body streamed
		body, _, _, err := core.GetObject(ctx, "bench", key, minio.GetObjectOptions{})
		if err != nil {
			return 0, err
		}
		defer body.Close()
		return io.Copy(io.Discard, body)
	}
	viaRegwarm := func() (int64, error) { return b.get("http://" + onS3 + "/v2/local/bench/warm/blobs/" + d) }
	viaFS := func() (int64, error) { return b.get("http://" + onFS + "/v2/local/bench/warm/blobs/" + d) }
	if err := b.pushBlob("http://"+onFS, "local/bench/warm", blob); err != nil {
		return err
	}
	rates := map[string]float64{}
	for _, t := range []struct {
		name string
		fn   func() (int64, error)
	}{{"direct", direct}, {"regwarm-s3", viaRegwarm}, {"regwarm-fs", viaFS}} {
		r, err := throughput(t.fn, int64(len(blob)), rounds)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		rates[t.name] = r
	}
	fmt.Printf("## Warm %d MiB blob GET (median of %d, MB/s)\n\n", blobMiB, rounds)
	fmt.Printf("| direct signed GET from versitygw | regwarm on S3 | ratio | regwarm on filesystem |\n|---|---|---|---|\n")
	fmt.Printf("| %.0f | %.0f | **%.2f×** | %.0f |\n\n", rates["direct"], rates["regwarm-s3"], rates["regwarm-s3"]/rates["direct"], rates["regwarm-fs"])

	// Manifest GET by tag.
	lat := map[string]time.Duration{}
	for name, addr := range map[string]string{"s3": onS3, "fs": onFS} {
		if err := b.pushImage("http://"+addr, "local/bench/tagged", "v1", 2, 1); err != nil {
			return err
		}
		l, err := b.manifestLatency("http://"+addr+"/v2/local/bench/tagged/manifests/v1", manifestGets)
		if err != nil {
			return fmt.Errorf("manifest GET on %s: %w", name, err)
		}
		lat[name] = l
	}
	fmt.Printf("## Manifest GET by tag (mean of %d sequential GETs)\n\n", manifestGets)
	fmt.Printf("| filesystem | S3 | ratio |\n|---|---|---|\n| %s | %s | %.2f× |\n\n",
		lat["fs"].Round(time.Microsecond), lat["s3"].Round(time.Microsecond), float64(lat["s3"])/float64(lat["fs"]))

	// Cold pull: a new image per run, pulled through each store in turn.
	cold := map[string][]time.Duration{}
	for i := range coldRuns {
		repo := fmt.Sprintf("bench/cold%d", i)
		if err := b.pushImage("http://"+up, repo, "v1", coldLayers, coldLayerMiB<<20); err != nil {
			return err
		}
		order := []string{"s3", "fs"}
		if i%2 == 1 {
			order = []string{"fs", "s3"}
		}
		for _, name := range order {
			addr := map[string]string{"s3": onS3, "fs": onFS}[name]
			start := time.Now()
			if err := b.pull("http://"+addr, "hub/"+repo, "v1"); err != nil {
				return fmt.Errorf("cold pull on %s: %w", name, err)
			}
			cold[name] = append(cold[name], time.Since(start))
		}
	}
	ms, mf := median(cold["s3"]), median(cold["fs"])
	fmt.Printf("## Cold pull (%d × %d MiB layers from docker-registry, median of %d)\n\n", coldLayers, coldLayerMiB, coldRuns)
	fmt.Printf("| filesystem | S3 | ratio |\n|---|---|---|\n| %s | %s | %.2f× |\n",
		mf.Round(time.Millisecond), ms.Round(time.Millisecond), float64(ms)/float64(mf))
	return nil
}

// throughput runs fn rounds times and returns the median rate in MB/s.
func throughput(fn func() (int64, error), size int64, rounds int) (float64, error) {
	if _, err := fn(); err != nil { // warm-up
		return 0, err
	}
	var ds []time.Duration
	for range rounds {
		start := time.Now()
		n, err := fn()
		if err != nil {
			return 0, err
		}
		if n != size {
			return 0, fmt.Errorf("read %d bytes, want %d", n, size)
		}
		ds = append(ds, time.Since(start))
	}
	return float64(size) / median(ds).Seconds() / 1e6, nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func (b *bench) get(url string) (int64, error) {
	resp, err := b.client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.Copy(io.Discard, resp.Body)
}

func (b *bench) manifestLatency(url string, n int) (time.Duration, error) {
	if _, err := b.getManifest(url); err != nil {
		return 0, err
	}
	start := time.Now()
	for range n {
		if _, err := b.getManifest(url); err != nil {
			return 0, err
		}
	}
	return time.Since(start) / time.Duration(n), nil
}

func (b *bench) getManifest(url string) ([]byte, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// pull fetches repo:tag's manifest and every blob it names.
func (b *bench) pull(base, repo, tag string) error {
	data, err := b.getManifest(base + "/v2/" + repo + "/manifests/" + tag)
	if err != nil {
		return err
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	for _, d := range append([]string{m.Config.Digest}, func() []string {
		var ds []string
		for _, l := range m.Layers {
			ds = append(ds, l.Digest)
		}
		return ds
	}()...) {
		if _, err := b.get(base + "/v2/" + repo + "/blobs/" + d); err != nil {
			return err
		}
	}
	return nil
}

// pushImage pushes an image of n random layers of size bytes as repo:tag.
func (b *bench) pushImage(base, repo, tag string, n, size int) error {
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"created":%q}`, time.Now().Format(time.RFC3339Nano)))
	if err := b.pushBlob(base, repo, cfg); err != nil {
		return err
	}
	var layers []map[string]any
	for i := range n {
		l := random(uint64(time.Now().UnixNano())+uint64(i), size)
		if err := b.pushBlob(base, repo, l); err != nil {
			return err
		}
		layers = append(layers, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digestOf(l), "size": len(l)})
	}
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digestOf(cfg), "size": len(cfg)},
		"layers": layers,
	})
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(m))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	return b.expect(req, http.StatusCreated)
}

// pushBlob uploads data with a POST and a monolithic PUT.
func (b *bench) pushBlob(base, repo string, data []byte) error {
	resp, err := b.client.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST upload to %s: %s", base, resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	q := loc.Query()
	q.Set("digest", digestOf(data))
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	return b.expect(req, http.StatusCreated)
}

func (b *bench) expect(req *http.Request, status int) error {
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != status {
		return fmt.Errorf("%s %s: %s %s", req.Method, req.URL, resp.Status, body)
	}
	return nil
}

// startRegistry starts docker-registry as the upstream and returns its
// address.
func (b *bench) startRegistry() (string, error) {
	dir := filepath.Join(b.work, "upstream")
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf("version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: %s}\n", filepath.Join(dir, "data"), addr)
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", err
	}
	return addr, b.start(dir, addr, nil, "docker-registry", "serve", path)
}

// startRegwarm starts regwarm serve with the given storage section, a
// push registry "local" and a registry "hub" on the upstream.
func (b *bench) startRegwarm(name, upstream, storage string, env []string) (string, error) {
	dir := filepath.Join(b.work, name)
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	maddr, err := freeAddr()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`version: 1
data_dir: %s
log: {level: warn}
serve: {listen: %q}
metrics: {listen: %q}
registries:
  - {name: hub, connectors: [up]}
  - {name: local, push: true}
connectors:
  - {name: up, url: "http://%s"}
`, filepath.Join(dir, "data"), addr, maddr, upstream) + storage
	path := filepath.Join(dir, "regwarm.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", err
	}
	return addr, b.start(dir, addr, env, b.regwarm, "serve", "--config", path)
}

// start runs argv with its output in dir/log and waits until addr answers
// /v2/.
func (b *bench) start(dir, addr string, env []string, argv ...string) error {
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	b.procs = append(b.procs, cmd)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, _ := os.ReadFile(filepath.Join(dir, "log"))
	return fmt.Errorf("%s did not start:\n%s", argv[0], out)
}

func (b *bench) stopAll() {
	for _, p := range b.procs {
		_ = p.Process.Kill()
		_ = p.Wait()
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// random returns n incompressible bytes from seed.
func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
