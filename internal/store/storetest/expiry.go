package storetest

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// clock is a settable time source for stores built with store.WithClock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// withExpiry builds a store on a fake clock whose upload sessions expire
// after an hour idle.
func withExpiry(t *testing.T, newStore NewStore) (store.Store, *clock) {
	t.Helper()
	c := newClock()
	return newStore(t, store.WithClock(c.now), store.WithUploadExpiry(time.Hour)), c
}

// testUploadExpiry: ExpireUploads removes the sessions idle since before
// the cutoff; a chunk keeps a session alive.
func testUploadExpiry(t *testing.T, newStore NewStore) {
	s, c := withExpiry(t, newStore)
	ctx := t.Context()
	idle := startUpload(t, s, repoA)
	idleOther := startUpload(t, s, repoC)
	busy := startUpload(t, s, repoA)
	c.advance(30 * time.Minute)
	appendChunk(t, s, repoA, busy, 0, []byte("chunk"), 5)
	c.advance(40 * time.Minute)

	n, err := s.ExpireUploads(ctx, c.now().Add(-time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("ExpireUploads = %d, %v; want the 2 sessions idle for 70 minutes", n, err)
	}
	for id, repo := range map[string]store.Repo{idle: repoA, idleOther: repoC} {
		_, err := s.UploadStatus(ctx, repo, id)
		wantErr(t, "UploadStatus of an expired session", err, store.ErrUploadUnknown)
		_, err = s.AppendUpload(ctx, repo, id, 0, bytes.NewReader([]byte("late")))
		wantErr(t, "AppendUpload of an expired session", err, store.ErrUploadUnknown)
	}
	if st, err := s.UploadStatus(ctx, repoA, busy); err != nil || st.Offset != 5 {
		t.Errorf("UploadStatus of the active session = %+v, %v; want offset 5", st, err)
	}
	if n, err := s.ExpireUploads(ctx, c.now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("second ExpireUploads = %d, %v; want 0", n, err)
	}
	// The survivor still completes.
	data := []byte("chunk")
	if _, err := s.CommitUpload(ctx, repoA, busy, digest.SHA256.FromBytes(data)); err != nil {
		t.Errorf("CommitUpload after expiry of others: %v", err)
	}
}

// testUploadExpiryOnUse: a session idle past the store's expiry is unknown
// even before anything removed it.
func testUploadExpiryOnUse(t *testing.T, newStore NewStore) {
	s, c := withExpiry(t, newStore)
	ctx := t.Context()
	id := startUpload(t, s, repoA)
	data := []byte("abandoned")
	appendChunk(t, s, repoA, id, 0, data, int64(len(data)))
	c.advance(61 * time.Minute)
	_, err := s.UploadStatus(ctx, repoA, id)
	wantErr(t, "UploadStatus", err, store.ErrUploadUnknown)
	_, err = s.AppendUpload(ctx, repoA, id, -1, bytes.NewReader(data))
	wantErr(t, "AppendUpload", err, store.ErrUploadUnknown)
	_, err = s.CommitUpload(ctx, repoA, id, digest.SHA256.FromBytes(data))
	wantErr(t, "CommitUpload", err, store.ErrUploadUnknown)
	wantNoBlob(t, s, repoA, digest.SHA256.FromBytes(data))
	if n, err := s.ExpireUploads(ctx, c.now().Add(-time.Hour)); err != nil || n != 1 {
		t.Errorf("ExpireUploads = %d, %v; want 1", n, err)
	}
}

// testUploadCaps: open sessions are capped per repository and per owner;
// ended and expired sessions free their place.
func testUploadCaps(t *testing.T, newStore NewStore) {
	s, c := withExpiry(t, newStore)
	ctx := t.Context()
	start := func(repo store.Repo, owner string) (string, error) {
		st, err := s.StartUpload(ctx, repo, store.StartUploadOptions{Owner: owner, MaxPerRepo: 2, MaxPerOwner: 3})
		return st.ID, err
	}
	must := func(repo store.Repo, owner string) string {
		t.Helper()
		id, err := start(repo, owner)
		if err != nil {
			t.Fatalf("StartUpload(%s, %q): %v", repo, owner, err)
		}
		return id
	}
	first := must(repoA, "alice")
	must(repoA, "bob")
	_, err := start(repoA, "carol")
	wantErr(t, "third session in one repository", err, store.ErrTooManyUploads)
	must(repoB, "alice")
	must(repoC, "alice")
	_, err = start(repoC, "alice")
	wantErr(t, "fourth session of one owner", err, store.ErrTooManyUploads)
	must(repoC, "bob")

	if err := s.CancelUpload(ctx, repoA, first); err != nil {
		t.Fatal(err)
	}
	must(repoA, "carol") // the cancelled session freed its place

	c.advance(2 * time.Hour) // everything expires, before any janitor ran
	for i := range 2 {
		must(repoA, fmt.Sprintf("user%d", i))
	}
	_, err = start(repoA, "dave")
	wantErr(t, "third fresh session in one repository", err, store.ErrTooManyUploads)
	must(repoB, "alice")
	must(repoB, "alice")
	must(repoC, "alice")
	_, err = start(repoC, "alice")
	wantErr(t, "fourth fresh session of one owner", err, store.ErrTooManyUploads)
}

// testUploadOwner: the status reports who started the session.
func testUploadOwner(t *testing.T, newStore NewStore) {
	s, _ := withExpiry(t, newStore)
	ctx := t.Context()
	st, err := s.StartUpload(ctx, repoA, store.StartUploadOptions{Owner: "alice"})
	if err != nil || st.Owner != "alice" {
		t.Fatalf("StartUpload = %+v, %v; want owner alice", st, err)
	}
	got, err := s.UploadStatus(ctx, repoA, st.ID)
	if err != nil || got.Owner != "alice" {
		t.Errorf("UploadStatus = %+v, %v; want owner alice", got, err)
	}
	got, err = s.AppendUpload(ctx, repoA, st.ID, 0, bytes.NewReader([]byte("x")))
	if err != nil || got.Owner != "alice" {
		t.Errorf("AppendUpload = %+v, %v; want owner alice", got, err)
	}
}
