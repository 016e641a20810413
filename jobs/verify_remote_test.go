package jobs_test

import (
	"context"
	"os"
	"testing"

	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// TestVerifyRemoteOnlyAgreesWithScan: a layer absent here but still
// upstream is remote_only for verify as for the dangling scan, not a
// problem; what is gone everywhere is a problem for both; verify with
// repair fetches the remote_only layer, and upstream outages are listed,
// not counted.
func TestVerifyRemoteOnlyAgreesWithScan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newVerifyFixture(t, "")
	app := f.up.AddImage("app", "v1", 8<<10, 4<<10)
	f.pull(t, "app", app)
	local := f.push(t, "pushed", randomBytes(2<<10))
	for _, d := range []string{f.file(app.Layers[1]), f.file(local.layers[0])} {
		if err := os.Remove(d); err != nil {
			t.Fatal(err)
		}
	}
	check := jobs.WithUpstreamCheck(jobs.ConnectorCheck(f.cfg, f.cache.Warming().Source))

	vrep, err := f.verifier(check).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srep, err := jobs.NewScanner(f.cfg, f.st, f.cache.Warming().Source, nil).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vs, ss := vrep.Summary, srep.Summary
	if vs.RemoteOnly != 1 || ss.RemoteOnly != 1 || vs.Problems != 1 || ss.Problems != 1 || vs.Absent != 1 {
		t.Errorf("remote_only verify %d scan %d, problems verify %d scan %d, absent %d; want 1 each",
			vs.RemoteOnly, ss.RemoteOnly, vs.Problems, ss.Problems, vs.Absent)
	}
	checkProblems(t, vrep.Problems, []jobs.Problem{{Registry: "local", Repository: "pushed", Manifest: local.manifest.String(),
		Missing: local.layers[0].String(), MediaType: layerType, Reason: jobs.ReasonAbsent}})

	// Repair fetches the remote_only layer; the next run finds it local.
	gets := f.up.Count("GET", "/blobs/"+app.Layers[1].String())
	vrep, err = f.verifier(check, jobs.WithRepairAbsent(true)).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := vrep.Summary; s.RemoteOnly != 1 || s.Repaired != 1 || s.Problems != 1 {
		t.Errorf("repair: summary %+v", s)
	}
	if got := f.up.Count("GET", "/blobs/"+app.Layers[1].String()); got != gets+1 {
		t.Errorf("repair fetched the layer %d times, want once", got-gets)
	}
	readBack(t, f.st, store.Repo{Registry: "hub", Name: "app"}, app.Layers[1])
	vrep, err = f.verifier(check).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := vrep.Summary; s.RemoteOnly != 0 || s.Repaired != 0 || s.Problems != 1 {
		t.Errorf("after repair: summary %+v", s)
	}
	if err := os.Remove(f.file(app.Layers[1])); err != nil {
		t.Fatal(err)
	}
	// An upstream that is down cannot tell: listed, not counted.
	f.up.SetDown(true)
	vrep, err = f.verifier(check).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := vrep.Summary; s.UpstreamErrors != 1 || s.RemoteOnly != 0 || s.Problems != 1 || len(vrep.Problems) != 2 ||
		vrep.Problems[0].Reason != jobs.ReasonUpstreamError || vrep.Problems[0].Missing != app.Layers[1].String() {
		t.Errorf("upstream down: summary %+v, problems %+v", s, vrep.Problems)
	}
}
