package storetest

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// startUpload opens a session in repo and checks its status.
func startUpload(t *testing.T, s store.Store, repo store.Repo) string {
	t.Helper()
	st, err := s.StartUpload(t.Context(), repo, store.StartUploadOptions{})
	if err != nil {
		t.Fatalf("StartUpload: %v", err)
	}
	if st.ID == "" || st.Repo != repo || st.Offset != 0 {
		t.Fatalf("StartUpload = %+v, want a new session in %s", st, repo)
	}
	return st.ID
}

// appendChunk appends data at offset and checks the new offset.
func appendChunk(t *testing.T, s store.Store, repo store.Repo, id string, offset int64, data []byte, want int64) {
	t.Helper()
	st, err := s.AppendUpload(t.Context(), repo, id, offset, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("AppendUpload(offset %d): %v", offset, err)
	}
	if st.Offset != want || st.ID != id {
		t.Fatalf("AppendUpload(offset %d) = %+v, want offset %d", offset, st, want)
	}
}

func testUploadSingle(t *testing.T, s store.Store) {
	tests := []struct {
		name string
		alg  digest.Algorithm
		size int
	}{
		{"sha256", digest.SHA256, 3000},
		{"sha256 empty", digest.SHA256, 0},
		{"sha512", digest.SHA512, 3000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := content("upload "+tc.name, tc.size)
			d := tc.alg.FromBytes(data)
			id := startUpload(t, s, repoA)
			appendChunk(t, s, repoA, id, 0, data, int64(len(data)))
			if st, err := s.UploadStatus(t.Context(), repoA, id); err != nil || st.Offset != int64(len(data)) {
				t.Errorf("UploadStatus = %+v, %v; want offset %d", st, err, len(data))
			}
			n, err := s.CommitUpload(t.Context(), repoA, id, d)
			if err != nil || n != int64(len(data)) {
				t.Fatalf("CommitUpload = %d, %v; want %d", n, err, len(data))
			}
			if got := readBlob(t, s, repoA, d); !bytes.Equal(got, data) {
				t.Errorf("committed blob differs")
			}
			_, err = s.UploadStatus(t.Context(), repoA, id)
			wantErr(t, "UploadStatus after commit", err, store.ErrUploadUnknown)
		})
	}
}

func testUploadChunks(t *testing.T, s store.Store) {
	data := content("chunks", 10000)
	d := digest.SHA256.FromBytes(data)
	id := startUpload(t, s, repoA)
	appendChunk(t, s, repoA, id, 0, data[:1], 1)
	appendChunk(t, s, repoA, id, 1, data[1:4000], 4000)
	appendChunk(t, s, repoA, id, 4000, nil, 4000)
	appendChunk(t, s, repoA, id, -1, data[4000:], 10000) // -1: no offset check
	if n, err := s.CommitUpload(t.Context(), repoA, id, d); err != nil || n != 10000 {
		t.Fatalf("CommitUpload = %d, %v", n, err)
	}
	if got := readBlob(t, s, repoA, d); !bytes.Equal(got, data) {
		t.Errorf("committed blob differs")
	}
	_, err := s.StatBlob(t.Context(), repoB, d)
	wantErr(t, "StatBlob in another repo", err, store.ErrBlobUnknown)
}

func testUploadOutOfOrder(t *testing.T, s store.Store) {
	data := content("order", 100)
	id := startUpload(t, s, repoA)
	_, err := s.AppendUpload(t.Context(), repoA, id, 50, bytes.NewReader(data[50:]))
	wantErr(t, "AppendUpload ahead of the data", err, store.ErrRangeInvalid)
	appendChunk(t, s, repoA, id, 0, data[:50], 50)
	_, err = s.AppendUpload(t.Context(), repoA, id, 0, bytes.NewReader(data[:50]))
	wantErr(t, "AppendUpload of a chunk again", err, store.ErrRangeInvalid)
	if st, err := s.UploadStatus(t.Context(), repoA, id); err != nil || st.Offset != 50 {
		t.Errorf("UploadStatus = %+v, %v; want offset 50", st, err)
	}
	appendChunk(t, s, repoA, id, 50, data[50:], 100)
	if _, err := s.CommitUpload(t.Context(), repoA, id, digest.SHA256.FromBytes(data)); err != nil {
		t.Fatalf("CommitUpload: %v", err)
	}
}

// testUploadWrongDigest: a failed commit stores nothing and keeps the
// session, so the caller may cancel it (or commit the right digest).
func testUploadWrongDigest(t *testing.T, s store.Store) {
	data := content("wrong digest", 500)
	id := startUpload(t, s, repoA)
	appendChunk(t, s, repoA, id, 0, data, 500)
	for _, wrong := range []digest.Digest{
		digest.SHA256.FromString("other"),
		digest.SHA512.FromString("other"),
	} {
		_, err := s.CommitUpload(t.Context(), repoA, id, wrong)
		wantErr(t, "CommitUpload with the wrong digest", err, store.ErrDigestMismatch)
		wantNoBlob(t, s, repoA, wrong)
	}
	wantNoBlob(t, s, repoA, digest.SHA256.FromBytes(data))
	if st, err := s.UploadStatus(t.Context(), repoA, id); err != nil || st.Offset != 500 {
		t.Errorf("UploadStatus after failed commit = %+v, %v; want offset 500", st, err)
	}
	if err := s.CancelUpload(t.Context(), repoA, id); err != nil {
		t.Errorf("CancelUpload after failed commit: %v", err)
	}
}

func testUploadCancel(t *testing.T, s store.Store) {
	data := content("cancel", 100)
	id := startUpload(t, s, repoA)
	appendChunk(t, s, repoA, id, 0, data, 100)
	if err := s.CancelUpload(t.Context(), repoA, id); err != nil {
		t.Fatalf("CancelUpload: %v", err)
	}
	_, err := s.UploadStatus(t.Context(), repoA, id)
	wantErr(t, "UploadStatus after cancel", err, store.ErrUploadUnknown)
	_, err = s.AppendUpload(t.Context(), repoA, id, 100, bytes.NewReader(data))
	wantErr(t, "AppendUpload after cancel", err, store.ErrUploadUnknown)
	_, err = s.CommitUpload(t.Context(), repoA, id, digest.SHA256.FromBytes(data))
	wantErr(t, "CommitUpload after cancel", err, store.ErrUploadUnknown)
	wantErr(t, "CancelUpload twice", s.CancelUpload(t.Context(), repoA, id), store.ErrUploadUnknown)
	wantNoBlob(t, s, repoA, digest.SHA256.FromBytes(data))
}

func testUploadWrongRepo(t *testing.T, s store.Store) {
	ctx := t.Context()
	data := content("wrong repo", 100)
	d := digest.SHA256.FromBytes(data)
	id := startUpload(t, s, repoA)
	unknown := uuid.NewString()
	for _, tc := range []struct {
		repo store.Repo
		id   string
	}{{repoB, id}, {repoC, id}, {repoA, unknown}} {
		_, err := s.UploadStatus(ctx, tc.repo, tc.id)
		wantErr(t, "UploadStatus", err, store.ErrUploadUnknown)
		_, err = s.AppendUpload(ctx, tc.repo, tc.id, 0, bytes.NewReader(data))
		wantErr(t, "AppendUpload", err, store.ErrUploadUnknown)
		_, err = s.CommitUpload(ctx, tc.repo, tc.id, d)
		wantErr(t, "CommitUpload", err, store.ErrUploadUnknown)
		wantErr(t, "CancelUpload", s.CancelUpload(ctx, tc.repo, tc.id), store.ErrUploadUnknown)
	}
	// The session is untouched by the attempts above.
	appendChunk(t, s, repoA, id, 0, data, 100)
	if _, err := s.CommitUpload(ctx, repoA, id, d); err != nil {
		t.Fatalf("CommitUpload in its own repo: %v", err)
	}
}

// errAfter yields data, then fails.
type errAfter struct {
	r   io.Reader
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

// testUploadFailedChunk: a chunk whose body fails midway is dropped whole.
func testUploadFailedChunk(t *testing.T, s store.Store) {
	data := content("failed chunk", 300)
	id := startUpload(t, s, repoA)
	appendChunk(t, s, repoA, id, 0, data[:100], 100)
	broken := errors.New("connection reset")
	_, err := s.AppendUpload(t.Context(), repoA, id, 100, &errAfter{r: bytes.NewReader(data[100:150]), err: broken})
	wantErr(t, "AppendUpload of a failing body", err, broken)
	if st, err := s.UploadStatus(t.Context(), repoA, id); err != nil || st.Offset != 100 {
		t.Errorf("UploadStatus after a failed chunk = %+v, %v; want offset 100", st, err)
	}
	appendChunk(t, s, repoA, id, 100, data[100:], 300)
	if _, err := s.CommitUpload(t.Context(), repoA, id, digest.SHA256.FromBytes(data)); err != nil {
		t.Fatalf("CommitUpload: %v", err)
	}
}
