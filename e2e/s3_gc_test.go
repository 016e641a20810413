package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestS3GC pushes two images sharing a layer to `regwarm serve` on
// versitygw, deletes one manifest and runs `regwarm gc` (delay 0s): the
// deleted image's own layer, config and manifest go from the bucket, the
// shared layer and the other image stay and still pull, nothing is left
// in trash/, a second run removes nothing, and `regwarm usage` counts the
// remaining image.
func TestS3GC(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	s := harness.StartS3(t)
	cfg := s3Config(s, "", "http://127.0.0.1:1") + "jobs:\n  gc: {schedule: \"\", delay: 0s}\n"
	rw := harness.StartRegwarmEnv(t, "serve", cfg, s.Env())
	base, repo := rw.URL(), "local/s3/gc"
	shared, own1, own2 := harness.RandomBytes(1501, 64<<10), harness.RandomBytes(1502, 32<<10), harness.RandomBytes(1503, 32<<10)
	cfg1, cfg2 := []byte(`{"architecture":"amd64","os":"linux","n":1}`), []byte(`{"architecture":"amd64","os":"linux","n":2}`)
	for _, b := range [][]byte{shared, own1, own2, cfg1, cfg2} {
		pushBlobHTTP(t, base, repo, b)
	}
	m1 := rawManifest(harness.Digest(cfg1), len(cfg1), shared, own1)
	m2 := rawManifest(harness.Digest(cfg2), len(cfg2), shared, own2)
	putManifestHTTP(t, base, repo, "v1", harness.MediaTypeManifest, m1)
	putManifestHTTP(t, base, repo, "v2", harness.MediaTypeManifest, m2)
	if st := httpStatus(t, http.MethodDelete, base+"/v2/"+repo+"/manifests/"+harness.Digest(m1)); st != http.StatusAccepted {
		t.Fatalf("DELETE manifest: %d", st)
	}

	// versitygw lists write times in whole seconds: gc counts an object
	// listed at second n as used until n+1.
	time.Sleep(1100 * time.Millisecond)
	rep := s3GC(t, s, rw.ConfigPath)
	gone := map[string]string{}
	for _, e := range rep.Removed {
		gone[e.Blob+e.Manifest] = e.Reason
	}
	for _, d := range []string{harness.Digest(own1), harness.Digest(cfg1), harness.Digest(m1)} {
		if gone[d] != "unreferenced" {
			t.Errorf("%s: removal reason %q, want unreferenced (removed: %v)", d, gone[d], gone)
		}
	}
	if len(gone) != 3 || rep.Summary.BytesFreed != int64(len(own1)+len(cfg1)+len(m1)) {
		t.Errorf("removed %v freeing %d, want exactly the deleted image's content", gone, rep.Summary.BytesFreed)
	}
	if m := missingKeys(t, s, blobKeys([]string{harness.Digest(own1), harness.Digest(cfg1), harness.Digest(m1)})); len(m) != 3 {
		t.Errorf("the deleted image's content is still in the bucket (missing only %q)", m)
	}
	if m := missingKeys(t, s, blobKeys([]string{harness.Digest(shared), harness.Digest(own2), harness.Digest(cfg2), harness.Digest(m2)})); len(m) != 0 {
		t.Errorf("the remaining image lost %q", m)
	}
	if trash := s.Keys(t, "trash/"); len(trash) != 0 {
		t.Errorf("trash/ after gc: %q", trash)
	}
	keys := s.Keys(t, "")
	for i, k := range keys {
		if i+1 < len(keys) && strings.HasPrefix(keys[i+1], k+"/") {
			t.Errorf("key %q is the directory of %q", k, keys[i+1])
		}
	}
	for _, b := range [][]byte{shared, own2, cfg2} {
		d, n, err := getBlobHTTP(httpClient, base, repo, harness.Digest(b))
		if err != nil || d != harness.Digest(b) || n != int64(len(b)) {
			t.Errorf("blob of the remaining image: %s %d %v", d, n, err)
		}
	}
	if st, d := manifestDigest(t, rw, "/v2/"+repo+"/manifests/v2"); st != http.StatusOK || d != harness.Digest(m2) {
		t.Errorf("v2 after gc: %d %s", st, d)
	}
	harness.Skopeo(t, "copy", "--src-tls-verify=false", "docker://"+rw.Addr+"/"+repo+":v2", "oci:"+filepath.Join(t.TempDir(), "out")+":v2")

	if again := s3GC(t, s, rw.ConfigPath); len(again.Removed) != 0 || again.Summary.Recovered != 0 {
		t.Errorf("second gc run removed %+v, recovered %d; want nothing", again.Removed, again.Summary.Recovered)
	}

	code, out := s3CLI(t, s, "usage", "--config", rw.ConfigPath, "--format", "json")
	if code != 0 {
		t.Fatalf("regwarm usage on S3: exit %d\n%s", code, out)
	}
	var u usageJSON
	if err := json.Unmarshal([]byte(out), &u); err != nil {
		t.Fatalf("usage: %v in %q", err, out)
	}
	want := int64(len(shared) + len(own2) + len(cfg2) + len(m2))
	i := -1
	for j, r := range u.Registries {
		if r.Name == "local" {
			i = j
		}
	}
	if i < 0 {
		t.Fatalf("usage without registry local: %s", out)
	}
	local := u.Registries[i]
	if local.Bytes != want || len(local.Repositories) != 1 || local.Repositories[0].Name != "s3/gc" ||
		local.Repositories[0].Bytes != want || local.Repositories[0].Tags != 1 {
		t.Errorf("usage of local = %+v, want %d bytes in s3/gc with 1 tag", local, want)
	}
}

// TestS3GCConcurrent is TestGCConcurrent on S3: gc in a loop beside
// pushes (HEAD, then chunked uploads of what is missing), deletes, skopeo
// pushes and pulls through the cache; every operation succeeds, kept
// images are whole, scan and verify find nothing wrong.
func TestS3GCConcurrent(t *testing.T) {
	s := harness.StartS3(t)
	testGCConcurrent(t, s.Storage(), s.Env())
}

// s3GC runs `regwarm gc --format json` on the S3 store and decodes its
// report.
func s3GC(t *testing.T, s *harness.S3, cfgPath string) gcReport {
	t.Helper()
	code, out := s3CLI(t, s, "gc", "--config", cfgPath, "--format", "json")
	if code != 0 {
		t.Fatalf("regwarm gc on S3: exit %d\n%s", code, out)
	}
	t.Logf("gc report:\n%s", out)
	var rep gcReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("gc report: %v in %q", err, out)
	}
	return rep
}

// s3CLI runs the regwarm binary with the S3 keys in its environment and
// returns its exit code and standard output (standard error is logged).
func s3CLI(t *testing.T, s *harness.S3, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.RegwarmBinary(t), args...)
	cmd.Env = append(append(os.Environ(), harness.ClientEnv(t)...), s.Env()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("$ regwarm %s\n%s", strings.Join(args, " "), harness.LastLines(stderr.String(), 20))
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), stdout.String()
	}
	if err != nil {
		t.Fatalf("regwarm %s: %v", strings.Join(args, " "), err)
	}
	return 0, stdout.String()
}

// TestS3GCKill9 kills `regwarm gc` on S3 while it removes garbage: the
// pushed image still pulls whole, the next run finishes the work, and
// `regwarm scan` and `regwarm verify` find nothing wrong.
func TestS3GCKill9(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	s := harness.StartS3(t)
	cfg := s3Config(s, "", "http://127.0.0.1:1") + "jobs:\n  gc: {schedule: \"\", delay: 1s}\n"
	rw := harness.StartRegwarmEnv(t, "serve", cfg, s.Env())
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 1900, Layers: 2, LayerSize: 64 << 10})
	pushImage(t, im, rw.Addr+"/local/s3/app:v1")
	// Garbage: unreferenced blobs written straight into the bucket's layout
	// (docs/storage.md), with write times two hours old.
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	const garbage = 600
	old := strconv.FormatInt(time.Now().Add(-2*time.Hour).UnixNano(), 10)
	for i := range garbage {
		b := harness.RandomBytes(uint64(20000+i), 64)
		key := blobKeys([]string{harness.Digest(b)})[0]
		if _, err := c.PutObject(t.Context(), s.Bucket, key, bytes.NewReader(b), int64(len(b)),
			minio.PutObjectOptions{UserMetadata: map[string]string{"Regwarm-Time": old}}); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int { return len(s.Keys(t, "blobs/")) }
	start := count()
	time.Sleep(2100 * time.Millisecond) // delay 1s; listings give whole seconds
	gc := harness.StartProcess(t, "regwarm-gc", s.Env(), harness.RegwarmBinary(t), "gc", "--config", rw.ConfigPath)
	harness.Eventually(t, time.Minute, "gc removing blobs", func() error {
		if n := count(); n > start-50 {
			return fmt.Errorf("%d of %d blobs left", n, start)
		}
		return nil
	})
	if err := gc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = gc.Wait(10 * time.Second)
	left := count()
	if left <= start-garbage {
		t.Fatalf("gc finished before the kill (%d of %d blobs left): make the garbage larger", left, start)
	}
	t.Logf("killed with %d of %d blobs left, trash/: %q", left, start, s.Keys(t, "trash/"))

	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/local/s3/app:v1", "oci:"+filepath.Join(t.TempDir(), "out")+":v1")
	rep := s3GC(t, s, rw.ConfigPath)
	t.Logf("second run: %+v", rep.Summary)
	if n := count(); n != start-garbage {
		t.Errorf("after the second run %d blobs stored, want %d (the image's)", n, start-garbage)
	}
	if code, out := s3CLI(t, s, "scan", "--config", rw.ConfigPath); code != 0 {
		t.Errorf("regwarm scan: exit %d\n%s", code, out)
	}
	if code, out := s3CLI(t, s, "verify", "--config", rw.ConfigPath); code != 0 {
		t.Errorf("regwarm verify: exit %d\n%s", code, out)
	}
	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/local/s3/app:v1", "oci:"+filepath.Join(t.TempDir(), "again")+":v1")
}
