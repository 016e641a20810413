package e2e

import (
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// TestGCKill9Loop: `regwarm gc` killed with SIGKILL at random points, over
// and over (at least 20 kills, many with an item half-removed in
// trash/), while it removes an image deleted by digest and thousands of
// unreferenced blobs. After every kill the kept image's content is all
// stored and its manifest served, though every file is older than the
// delay; the next complete run recovers what the last kill left
// half-removed and finishes the work; scan and verify are clean.
func TestGCKill9Loop(t *testing.T) {
	requireRegwarm(t)
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+`registries:
  - {name: local, default: true, push: true}
jobs:
  gc: {schedule: "", delay: 1h}
`)
	storeDir := filepath.Join(rw.DataDir, "store")
	countBlobs := func() int {
		n := 0
		_ = filepath.WalkDir(filepath.Join(storeDir, "blobs"), func(_ string, de fs.DirEntry, err error) error {
			if err == nil && !de.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	kept := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 2100, Layers: 2, LayerSize: 32 << 10})
	pushImage(t, kept, rw.Addr+"/team/app:v1")
	keptBlobs := countBlobs()
	gone := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 2101, Layers: 3, LayerSize: 32 << 10})
	pushImage(t, gone, rw.Addr+"/team/old:v1")
	if st := httpStatusErr(http.MethodDelete, rw.URL()+"/v2/team/old/manifests/"+gone.IndexDigest); st != http.StatusAccepted {
		t.Fatalf("DELETE team/old index: status %d", st)
	}
	// Garbage in the store's layout (docs of store.FS), quick to write;
	// batch picks new content, so a fast machine that removed it all
	// before a kill landed mid-removal gets more.
	const garbage = 4000
	addGarbage := func(batch int) {
		for i := range garbage {
			b := harness.RandomBytes(uint64(21000+batch*garbage+i), 64)
			p := blobFile(rw.DataDir, harness.Digest(b))
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// Everything is older than the delay: only references keep content.
		old := time.Now().Add(-2 * time.Hour)
		if err := filepath.WalkDir(storeDir, func(p string, de fs.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			return os.Chtimes(p, old, old)
		}); err != nil {
			t.Fatal(err)
		}
	}
	addGarbage(0)
	start := countBlobs()
	batches := 1

	keptDigests := imageDigests(kept)
	halfRemoved := func() int {
		half, _ := filepath.Glob(filepath.Join(storeDir, "trash", "*", "*", "data"))
		return len(half)
	}
	seed := time.Now().UnixNano()
	t.Logf("kill delays from seed %d", seed)
	rnd := rand.New(rand.NewPCG(uint64(seed), 2100))
	// At least wantKills kills, and more until one leaves an item
	// half-removed (most of a removal is writing its trash entry: a few
	// kills in a hundred land in the half-removed window; the store's
	// TestFSRemoveKill9 kills at each step deterministically).
	const wantKills, maxKills = 24, 200
	kills, withHalf, lastHalf := 0, 0, 0
	for run := 0; kills < wantKills || withHalf == 0; run++ {
		if run == 2*maxKills || kills == maxKills {
			t.Fatalf("%d runs, %d killed, %d with items half-removed", run, kills, withHalf)
		}
		cmd := exec.Command(harness.RegwarmBinary(t), "gc", "--config", rw.ConfigPath)
		cmd.Stdout, cmd.Stderr = nil, nil
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// Three kills in four wait until the run removes (its trash
		// session has entries), then a random time more; the others land
		// anywhere.
		var delay time.Duration
		if run%4 != 0 {
			removing := time.Now()
			for time.Since(removing) < 30*time.Second {
				if es, _ := filepath.Glob(filepath.Join(storeDir, "trash", "*", "*", "path")); len(es) > 0 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			delay = time.Duration(rnd.IntN(40)) * time.Millisecond
		} else {
			delay = time.Duration(50+rnd.IntN(700)) * time.Millisecond
		}
		select {
		case err := <-done:
			// Finished before the kill: nothing to prove this round.
			t.Logf("run %d finished before its kill (%v), %d blobs left", run, err, countBlobs())
			if countBlobs() <= keptBlobs {
				if batches == 10 {
					t.Fatalf("gc removed %d batches of garbage within %d kills", batches, kills)
				}
				t.Logf("gc removed all the garbage: adding batch %d", batches)
				addGarbage(batches)
				batches++
			}
			continue
		case <-time.After(delay):
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err := <-done
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() {
			t.Logf("run %d exited (%v) as it was killed", run, err)
			continue
		}
		kills++
		lastHalf = halfRemoved()
		if lastHalf > 0 {
			withHalf++
		}
		if missing := missingBlobs(rw.DataDir, keptDigests); len(missing) > 0 {
			t.Fatalf("kill %d: referenced content gone: %v", kills, missing)
		}
		if st, d := manifestDigest(t, rw, "/v2/team/app/manifests/v1"); st != http.StatusOK || d != kept.IndexDigest {
			t.Fatalf("kill %d: team/app:v1 = %d %s", kills, st, d)
		}
	}
	t.Logf("%d kills, %d with items half-removed; %d of %d blobs left, %d half-removed", kills, withHalf, countBlobs(), start, lastHalf)
	if withHalf == 0 {
		t.Fatal("no kill left an item half-removed: the crash path was not exercised")
	}

	rep := runGC(t, rw.ConfigPath)
	if rep.Summary.Recovered != lastHalf {
		t.Errorf("the run after the kills recovered %d items, want %d (half-removed by the last kill)", rep.Summary.Recovered, lastHalf)
	}
	if n := countBlobs(); n != keptBlobs {
		t.Errorf("%d blobs stored after the final run, want %d (the kept image's)", n, keptBlobs)
	}
	if missing := missingBlobs(rw.DataDir, keptDigests); len(missing) > 0 {
		t.Errorf("referenced content gone: %v", missing)
	}
	for _, d := range imageDigests(gone) {
		if slices.Contains(keptDigests, d) {
			continue
		}
		if _, err := os.Stat(blobFile(rw.DataDir, d)); err == nil {
			t.Errorf("content %s of the deleted image still stored", d)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(storeDir, "trash", "*", "*", "path")); len(left) != 0 {
		t.Errorf("trash/ after the final run: %v", left)
	}
	harness.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+rw.Addr+"/team/app:v1", "oci:"+filepath.Join(t.TempDir(), "out")+":v1")
	if res := runRegwarmCLI(t, "scan", "--config", rw.ConfigPath); res.code != 0 {
		t.Errorf("regwarm scan: exit %d\n%s", res.code, res.stdout)
	}
	if res := runRegwarmCLI(t, "verify", "--config", rw.ConfigPath); res.code != 0 {
		t.Errorf("regwarm verify: exit %d\n%s", res.code, res.stdout)
	}
}
