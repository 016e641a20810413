package store

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestPullsSharedAcrossProcesses: two FS values on one root (two serve
// processes on one store) see each other's pulls, and the later time wins
// whichever writes last.
func TestPullsSharedAcrossProcesses(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	a, err := NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	repo := Repo{Registry: "hub", Name: "team/app"}
	x, y := digest.FromString("x"), digest.FromString("y")
	t1 := time.Unix(1_900_000_000, 0).UTC()
	if err := a.RecordPulls(ctx, repo, map[digest.Digest]time.Time{x: t1.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := b.RecordPulls(ctx, repo, map[digest.Digest]time.Time{x: t1, y: t1}); err != nil {
		t.Fatal(err)
	}
	for name, fs := range map[string]*FS{"a": a, "b": b} {
		got, err := fs.LastPulled(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		if !got[x].Equal(t1.Add(time.Minute)) || !got[y].Equal(t1) {
			t.Errorf("%s sees %v", name, got)
		}
	}
	// Pull records make no repository: walks and tags ignore them.
	other := Repo{Registry: "hub", Name: "never/pushed"}
	if err := a.RecordPulls(ctx, other, map[digest.Digest]time.Time{x: t1}); err != nil {
		t.Fatal(err)
	}
	var repos []string
	if err := a.Repositories(ctx, "hub", func(r Repo) error { repos = append(repos, r.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(repos) != 0 {
		t.Errorf("pull records made repositories %v", repos)
	}
}
