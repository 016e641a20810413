package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// pullRecorder returns s's PullRecorder ability; a backend without it
// passes these cases trivially (the ability is optional).
func pullRecorder(t *testing.T, s store.Store) (store.PullRecorder, bool) {
	pr, ok := s.(store.PullRecorder)
	if !ok {
		t.Logf("%T has no PullRecorder ability", s)
	}
	return pr, ok
}

func lastPulled(t *testing.T, pr store.PullRecorder, repo store.Repo) map[digest.Digest]time.Time {
	t.Helper()
	got, err := pr.LastPulled(context.Background(), repo)
	if err != nil {
		t.Fatalf("LastPulled(%s): %v", repo, err)
	}
	return got
}

func testPulls(t *testing.T, s store.Store) {
	pr, ok := pullRecorder(t, s)
	if !ok {
		return
	}
	ctx := context.Background()
	m1 := newManifest(t, digest.SHA256, "one", nil)
	m2 := newManifest(t, digest.SHA256, "two", nil)
	putManifest(t, s, repoA, m1, store.PutManifestOptions{Tag: "v1"})
	putManifest(t, s, repoA, m2, store.PutManifestOptions{})
	if got := lastPulled(t, pr, repoA); len(got) != 0 {
		t.Fatalf("before any pull: %v, want none", got)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	if err := pr.RecordPulls(ctx, repoA, map[digest.Digest]time.Time{m1.Digest: t0}); err != nil {
		t.Fatal(err)
	}
	got := lastPulled(t, pr, repoA)
	if want := t0.Truncate(time.Second); !got[m1.Digest].Equal(want) || len(got) != 1 {
		t.Fatalf("after one pull: %v, want %s: %v", got, m1.Digest, want)
	}
	// Times only grow: an earlier time is ignored, a later one kept.
	later := t0.Add(time.Hour)
	err := pr.RecordPulls(ctx, repoA, map[digest.Digest]time.Time{m1.Digest: t0.Add(-time.Hour), m2.Digest: later})
	if err != nil {
		t.Fatal(err)
	}
	got = lastPulled(t, pr, repoA)
	if !got[m1.Digest].Equal(t0.Truncate(time.Second)) || !got[m2.Digest].Equal(later.Truncate(time.Second)) {
		t.Fatalf("after earlier+later: %v", got)
	}
	// Per repository: the same manifest elsewhere is not pulled.
	putManifest(t, s, repoC, m1, store.PutManifestOptions{})
	if got := lastPulled(t, pr, repoC); len(got) != 0 {
		t.Fatalf("other registry: %v, want none", got)
	}
	// Invalid input is rejected.
	err = pr.RecordPulls(ctx, repoA, map[digest.Digest]time.Time{"sha256:nothex": t0})
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("bad digest: %v, want ErrInvalid", err)
	}
	if _, err := pr.LastPulled(ctx, store.Repo{Registry: "hub", Name: "../x"}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("bad repo: %v, want ErrInvalid", err)
	}
}

// testPullsConcurrent records pulls of different manifests from many
// writers at once (as N serve processes do): none is lost, and each keeps
// its latest time.
func testPullsConcurrent(t *testing.T, s store.Store) {
	pr, ok := pullRecorder(t, s)
	if !ok {
		return
	}
	const writers, rounds = 8, 5
	ms := make([]store.Manifest, writers)
	for i := range ms {
		ms[i] = newManifest(t, digest.SHA256, string(rune('a'+i)), nil)
		putManifest(t, s, repoB, ms[i], store.PutManifestOptions{})
	}
	base := time.Unix(1_800_000_000, 0).UTC()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				pulls := map[digest.Digest]time.Time{
					ms[w].Digest:             base.Add(time.Duration(r) * time.Second),
					ms[(w+1)%writers].Digest: base,
				}
				if err := pr.RecordPulls(context.Background(), repoB, pulls); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := lastPulled(t, pr, repoB)
	for _, m := range ms {
		if want := base.Add((rounds - 1) * time.Second); !got[m.Digest].Equal(want) {
			t.Errorf("%s: last pulled %v, want %v", m.Digest, got[m.Digest], want)
		}
	}
}
