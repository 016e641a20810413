package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

func testWalkRepositories(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Names chosen so that directory order and lexical order differ:
	// "a" < "a-b" < "a.b" < "a/b" < "a_b", and "r-x/…" < "r/…".
	repos := []store.Repo{
		{Registry: "r", Name: "a"},
		{Registry: "r", Name: "a-b"},
		{Registry: "r", Name: "a.b"},
		{Registry: "r", Name: "a/b"},
		{Registry: "r", Name: "a_b"},
		{Registry: "r", Name: "a/c/d"},
		{Registry: "r", Name: "b"},
		{Registry: "r-x", Name: "z"},
		{Registry: "hub", Name: "library/alpine"},
	}
	var want []string
	for i, r := range repos {
		switch i % 3 { // every way of creating a repository
		case 0:
			putBlob(t, s, r, []byte(r.String()))
		case 1:
			putManifest(t, s, r, newManifest(t, digest.SHA256, r.String(), nil), store.PutManifestOptions{})
		case 2:
			id := startUpload(t, s, r)
			appendChunk(t, s, r, id, 0, []byte(r.String()), int64(len(r.String())))
			if _, err := s.CommitUpload(ctx, r, id, digest.SHA256.FromString(r.String())); err != nil {
				t.Fatalf("CommitUpload: %v", err)
			}
		}
		want = append(want, r.String())
	}
	slices.Sort(want)

	if got := collectRepos(t, s, ""); !slices.Equal(got, want) {
		t.Errorf("Repositories(\"\") =\n %q\nwant\n %q", got, want)
	}
	var wantR []string
	for _, name := range want {
		if strings.HasPrefix(name, "r/") {
			wantR = append(wantR, name)
		}
	}
	if got := collectRepos(t, s, "r"); !slices.Equal(got, wantR) {
		t.Errorf("Repositories(r) =\n %q\nwant\n %q", got, wantR)
	}
	if got := collectRepos(t, s, "nothing"); len(got) != 0 {
		t.Errorf("Repositories(nothing) = %q, want none", got)
	}
}

func testWalkManifestsAndBlobs(t *testing.T, s store.Store) {
	ctx := t.Context()
	wantBlobs := map[digest.Digest]int64{}
	var wantA []digest.Digest
	for i, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512, digest.SHA256} {
		m := newManifest(t, alg, string(rune('a'+i)), nil)
		putManifest(t, s, repoA, m, store.PutManifestOptions{})
		wantA = append(wantA, m.Digest)
		wantBlobs[m.Digest] = int64(len(m.Data))
	}
	mb := newManifest(t, digest.SHA256, "b", nil)
	putManifest(t, s, repoB, mb, store.PutManifestOptions{})
	wantBlobs[mb.Digest] = int64(len(mb.Data))
	data := content("walk", 1234)
	wantBlobs[putBlob(t, s, repoA, data)] = int64(len(data))

	var gotA []digest.Digest
	if err := s.Manifests(ctx, repoA, func(d digest.Digest) error {
		gotA = append(gotA, d)
		return nil
	}); err != nil {
		t.Fatalf("Manifests: %v", err)
	}
	slices.Sort(gotA)
	slices.Sort(wantA)
	if !slices.Equal(gotA, wantA) {
		t.Errorf("Manifests(%s) = %v, want %v", repoA, gotA, wantA)
	}
	if err := s.Manifests(ctx, repoC, func(d digest.Digest) error {
		t.Errorf("Manifests(%s) yields %s, want nothing", repoC, d)
		return nil
	}); err != nil {
		t.Errorf("Manifests of an unknown repo: %v", err)
	}

	got := collectBlobs(t, s)
	if len(got) != len(wantBlobs) {
		t.Errorf("Blobs = %v, want %v", got, wantBlobs)
	}
	for d, size := range wantBlobs {
		if got[d] != size {
			t.Errorf("Blobs[%s] = %d, want %d", d, got[d], size)
		}
	}
}

func testWalkStops(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, r := range []store.Repo{repoA, repoB} {
		for _, name := range []string{"x", "y"} {
			putManifest(t, s, r, newManifest(t, digest.SHA256, r.Name+name, nil), store.PutManifestOptions{})
		}
	}
	stop := errors.New("stop")
	calls := 0
	err := s.Repositories(ctx, "", func(store.Repo) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Repositories: %d calls, error %v; want 1 call and the callback's error", calls, err)
	}
	calls = 0
	err = s.Manifests(ctx, repoA, func(digest.Digest) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Manifests: %d calls, error %v; want 1 call and the callback's error", calls, err)
	}
	calls = 0
	err = s.Blobs(ctx, func(digest.Digest, int64) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Blobs: %d calls, error %v; want 1 call and the callback's error", calls, err)
	}
}

func testContextCanceled(t *testing.T, s store.Store) {
	m := newManifest(t, digest.SHA256, "ctx", nil)
	putManifest(t, s, repoA, m, store.PutManifestOptions{Tag: "v1"})
	id := startUpload(t, s, repoA)
	d := m.Digest

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	canceled := func(what string, err error) {
		t.Helper()
		wantErr(t, what, err, context.Canceled)
	}
	_, err := s.HasBlob(ctx, d)
	canceled("HasBlob", err)
	_, err = s.StatBlob(ctx, repoA, d)
	canceled("StatBlob", err)
	_, err = s.OpenBlob(ctx, repoA, d)
	canceled("OpenBlob", err)
	_, err = s.Manifest(ctx, repoA, d)
	canceled("Manifest", err)
	_, err = s.Tag(ctx, repoA, "v1")
	canceled("Tag", err)
	_, err = s.Tags(ctx, repoA)
	canceled("Tags", err)
	_, err = s.Referrers(ctx, repoA, d)
	canceled("Referrers", err)
	canceled("PutBlob", s.PutBlob(ctx, repoA, d, int64(len(m.Data)), bytes.NewReader(m.Data)))
	canceled("LinkBlob", s.LinkBlob(ctx, repoB, d))
	canceled("UnlinkBlob", s.UnlinkBlob(ctx, repoA, d))
	canceled("PutManifest", s.PutManifest(ctx, repoA, m, store.PutManifestOptions{}))
	canceled("SetTag", s.SetTag(ctx, repoA, "v2", store.TagInfo{Digest: d}))
	canceled("DeleteTag", s.DeleteTag(ctx, repoA, "v1"))
	canceled("DeleteManifest", s.DeleteManifest(ctx, repoA, d))
	_, err = s.StartUpload(ctx, repoA, store.StartUploadOptions{})
	canceled("StartUpload", err)
	_, err = s.UploadStatus(ctx, repoA, id)
	canceled("UploadStatus", err)
	_, err = s.AppendUpload(ctx, repoA, id, 0, strings.NewReader("x"))
	canceled("AppendUpload", err)
	_, err = s.CommitUpload(ctx, repoA, id, d)
	canceled("CommitUpload", err)
	canceled("CancelUpload", s.CancelUpload(ctx, repoA, id))
	canceled("Repositories", s.Repositories(ctx, "", func(store.Repo) error { return nil }))
	canceled("Manifests", s.Manifests(ctx, repoA, func(digest.Digest) error { return nil }))
	canceled("Blobs", s.Blobs(ctx, func(digest.Digest, int64) error { return nil }))

	// Nothing changed.
	if _, err := s.Tag(t.Context(), repoA, "v1"); err != nil {
		t.Errorf("Tag after canceled calls: %v", err)
	}
	if st, err := s.UploadStatus(t.Context(), repoA, id); err != nil || st.Offset != 0 {
		t.Errorf("UploadStatus after canceled calls = %+v, %v", st, err)
	}
}

// cancelingReader yields its data in small pieces and cancels after the
// first one.
type cancelingReader struct {
	r      io.Reader
	cancel context.CancelFunc
}

func (c *cancelingReader) Read(p []byte) (int, error) {
	defer c.cancel()
	return c.r.Read(p[:min(len(p), 4096)])
}

func testContextCanceledMidStream(t *testing.T, s store.Store) {
	data := content("mid stream", 1<<20)
	d := digest.SHA256.FromBytes(data)

	ctx, cancel := context.WithCancel(t.Context())
	err := s.PutBlob(ctx, repoA, d, int64(len(data)), &cancelingReader{r: bytes.NewReader(data), cancel: cancel})
	wantErr(t, "PutBlob canceled midway", err, context.Canceled)
	wantNoBlob(t, s, repoA, d)

	id := startUpload(t, s, repoA)
	ctx, cancel = context.WithCancel(t.Context())
	_, err = s.AppendUpload(ctx, repoA, id, 0, &cancelingReader{r: bytes.NewReader(data), cancel: cancel})
	wantErr(t, "AppendUpload canceled midway", err, context.Canceled)
	if st, err := s.UploadStatus(t.Context(), repoA, id); err != nil || st.Offset != 0 {
		t.Errorf("UploadStatus after a canceled chunk = %+v, %v; want offset 0", st, err)
	}
}
