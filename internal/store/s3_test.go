package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/store/s3test"
	"github.com/regwarm/regwarm/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }

var s3Stores atomic.Int64

// newS3 opens an S3 store in the shared versitygw bucket of the test
// process, under a prefix of its own.
func newS3(t *testing.T, opts ...store.Option) *store.S3 {
	t.Helper()
	srv := s3test.Shared(t)
	bucket := s3Bucket(t, srv)
	s, err := store.NewS3(t.Context(), store.S3Options{
		Bucket: bucket, Prefix: fmt.Sprintf("t%d/", s3Stores.Add(1)), Region: srv.Region,
		Endpoint: srv.Endpoint, PathStyle: true, AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		LocalDir: t.TempDir(),
	}, opts...)
	if err != nil {
		t.Fatalf("NewS3: %v", err)
	}
	return s
}

var (
	bucketOnce atomic.Pointer[string]
)

// s3Bucket returns the bucket shared by this process's S3 store tests.
func s3Bucket(t *testing.T, srv *s3test.Server) string {
	if b := bucketOnce.Load(); b != nil {
		return *b
	}
	b := srv.Bucket(t)
	if bucketOnce.CompareAndSwap(nil, &b) {
		return b
	}
	return *bucketOnce.Load()
}

func TestS3(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts ...store.Option) store.Store { return newS3(t, opts...) })
}

// s3Pair opens two stores on one bucket and prefix, as two processes
// with their own local directories would.
func s3Pair(t *testing.T, opts ...store.Option) (*store.S3, *store.S3, *s3test.Server, string, string) {
	t.Helper()
	srv := s3test.Shared(t)
	bucket := s3Bucket(t, srv)
	prefix := fmt.Sprintf("pair%d", s3Stores.Add(1))
	open := func() *store.S3 {
		s, err := store.NewS3(t.Context(), store.S3Options{
			Bucket: bucket, Prefix: prefix, Region: srv.Region, Endpoint: srv.Endpoint, PathStyle: true,
			AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, LocalDir: t.TempDir(),
		}, opts...)
		if err != nil {
			t.Fatalf("NewS3: %v", err)
		}
		return s
	}
	return open(), open(), srv, bucket, prefix + "/"
}

// s3Keys lists every key under prefix.
func s3Keys(t *testing.T, srv *s3test.Server, bucket, prefix string) []string {
	t.Helper()
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for obj := range c.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			t.Fatalf("list: %v", obj.Err)
		}
		keys = append(keys, obj.Key)
	}
	return keys
}

func TestS3SharedAcrossProcesses(t *testing.T) {
	t.Parallel()
	a, b, srv, bucket, prefix := s3Pair(t)
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "library/alpine"}

	// A chunked upload started on a, continued and committed on b.
	data := bytes.Repeat([]byte("regwarm-s3 "), 100_000)
	d := digest.SHA256.FromBytes(data)
	st, err := a.StartUpload(ctx, repo, store.StartUploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AppendUpload(ctx, repo, st.ID, 0, bytes.NewReader(data[:400_000])); err != nil {
		t.Fatal(err)
	}
	if got, err := b.UploadStatus(ctx, repo, st.ID); err != nil || got.Offset != 400_000 {
		t.Fatalf("UploadStatus on b = %+v, %v; want offset 400000", got, err)
	}
	if _, err := b.AppendUpload(ctx, repo, st.ID, 400_000, bytes.NewReader(data[400_000:])); err != nil {
		t.Fatal(err)
	}
	if n, err := b.CommitUpload(ctx, repo, st.ID, d); err != nil || n != int64(len(data)) {
		t.Fatalf("CommitUpload on b = %d, %v", n, err)
	}
	blob, err := a.OpenBlob(ctx, repo, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(blob)
	_ = blob.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob read on a: %d bytes, %v; want the uploaded %d", len(got), err, len(data))
	}
	for _, k := range s3Keys(t, srv, bucket, prefix+"uploads/") {
		t.Errorf("session object left after commit: %s", k)
	}

	// A tag moved by one process is seen by the other within the metadata
	// TTL (a second by default), at once by the process itself.
	m1 := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"n":"1"}}`)
	m2 := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"n":"2"}}`)
	for _, m := range [][]byte{m1, m2} {
		man := store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.SHA256.FromBytes(m), Data: m}
		if err := a.PutManifest(ctx, repo, man, store.PutManifestOptions{Tag: "latest"}); err != nil {
			t.Fatal(err)
		}
		if ti, err := a.Tag(ctx, repo, "latest"); err != nil || ti.Digest != man.Digest {
			t.Fatalf("Tag on a = %+v, %v; want %s", ti, err, man.Digest)
		}
		start := time.Now()
		for {
			ti, err := b.Tag(ctx, repo, "latest")
			if err == nil && ti.Digest == man.Digest {
				break
			}
			if time.Since(start) > 1500*time.Millisecond {
				t.Fatalf("Tag on b = %+v, %v after %v; want %s", ti, err, time.Since(start), man.Digest)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if got, err := b.Manifest(ctx, repo, man.Digest); err != nil || !bytes.Equal(got.Data, m) {
			t.Fatalf("Manifest on b: %v", err)
		}
	}
	// A manifest deleted on a is gone on a at once.
	if err := a.DeleteManifest(ctx, repo, digest.SHA256.FromBytes(m2)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Manifest(ctx, repo, digest.SHA256.FromBytes(m2)); !errors.Is(err, store.ErrManifestUnknown) {
		t.Errorf("Manifest on a after delete on a: %v, want ErrManifestUnknown", err)
	}
}

// TestS3NoMetadataCache: with WithMetadataTTL(0) every process sees a tag
// moved or a manifest deleted by another at once, though it cached the
// manifest's content.
func TestS3NoMetadataCache(t *testing.T) {
	t.Parallel()
	a, b, _, _, _ := s3Pair(t, store.WithMetadataTTL(0))
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "strict"}
	var last digest.Digest
	for i := range 3 {
		m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"n":"%d"}}`, i))
		man := store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.SHA256.FromBytes(m), Data: m}
		if err := a.PutManifest(ctx, repo, man, store.PutManifestOptions{Tag: "latest"}); err != nil {
			t.Fatal(err)
		}
		if ti, err := b.Tag(ctx, repo, "latest"); err != nil || ti.Digest != man.Digest {
			t.Fatalf("Tag on b = %+v, %v; want %s", ti, err, man.Digest)
		}
		if _, err := b.Manifest(ctx, repo, man.Digest); err != nil {
			t.Fatal(err)
		}
		last = man.Digest
	}
	if err := a.DeleteManifest(ctx, repo, last); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Manifest(ctx, repo, last); !errors.Is(err, store.ErrManifestUnknown) {
		t.Errorf("Manifest on b after delete on a: %v, want ErrManifestUnknown", err)
	}
}

// TestS3KeyLayout: no object key is the "directory" of another, which
// versitygw's posix backend (and any filesystem-backed S3) could not hold.
func TestS3KeyLayout(t *testing.T) {
	t.Parallel()
	a, _, srv, bucket, prefix := s3Pair(t)
	ctx := t.Context()
	for _, name := range []string{"a", "a/b", "a/b/c", "library/alpine", "library"} {
		repo := store.Repo{Registry: "hub", Name: name}
		data := []byte("layer of " + name)
		d := digest.SHA256.FromBytes(data)
		if err := a.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` +
			string(d) + `","size":1},"annotations":{"r":"` + name + `"}}`)
		man := store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.SHA256.FromBytes(m), Data: m}
		subj := &ocispec.Descriptor{Digest: d}
		if err := a.PutManifest(ctx, repo, man, store.PutManifestOptions{Tag: "v1", Subject: subj}); err != nil {
			t.Fatal(err)
		}
		if err := a.RecordPulls(ctx, repo, map[digest.Digest]time.Time{man.Digest: time.Now()}); err != nil {
			t.Fatal(err)
		}
		st, err := a.StartUpload(ctx, repo, store.StartUploadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.AppendUpload(ctx, repo, st.ID, 0, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	keys := s3Keys(t, srv, bucket, prefix)
	if len(keys) < 30 {
		t.Fatalf("only %d keys: %q", len(keys), keys)
	}
	for i, k := range keys {
		if i+1 < len(keys) && strings.HasPrefix(keys[i+1], k+"/") {
			t.Errorf("key %q is the directory of %q", k, keys[i+1])
		}
		for _, other := range keys {
			if strings.HasPrefix(other, k+"/") {
				t.Errorf("key %q is the directory of %q", k, other)
				break
			}
		}
	}
	var names []string
	if err := a.Repositories(ctx, "hub", func(r store.Repo) error { names = append(names, r.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "a/b", "a/b/c", "library", "library/alpine"}; !slices.Equal(names, want) {
		t.Errorf("Repositories = %q, want %q", names, want)
	}
}

func TestS3BlobRange(t *testing.T) {
	t.Parallel()
	s := newS3(t)
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "r"}
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	d := digest.SHA256.FromBytes(data)
	if err := s.PutBlob(ctx, repo, d, -1, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	b, err := s.OpenBlob(ctx, repo, d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sk, ok := b.(io.Seeker)
	if !ok || b.Size() != int64(len(data)) {
		t.Fatalf("blob is a Seeker: %v, size %d", ok, b.Size())
	}
	for _, off := range []int64{1 << 20, 17, int64(len(data)) - 5, 0} {
		if _, err := sk.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(b, buf); err != nil || !bytes.Equal(buf, data[off:off+5]) {
			t.Errorf("read at %d = %x, %v; want %x", off, buf, err, data[off:off+5])
		}
	}
}

func TestS3SpoolAndFailedWrites(t *testing.T) {
	t.Parallel()
	srv := s3test.Shared(t)
	bucket := s3Bucket(t, srv)
	local := t.TempDir()
	prefix := fmt.Sprintf("spool%d/", s3Stores.Add(1))
	s, err := store.NewS3(t.Context(), store.S3Options{
		Bucket: bucket, Prefix: prefix, Region: srv.Region, Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, LocalDir: local,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "r"}
	data := bytes.Repeat([]byte("spooled "), 200_000)
	d := digest.SHA256.FromBytes(data)

	// A spool that receives other bytes than announced stores nothing.
	sp, err := s.Spool(ctx, d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 1
	if err := sp.Fill(bytes.NewReader(bad), func(int64) {}); err != nil {
		t.Fatal(err)
	}
	if err := sp.Commit(ctx, repo); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("Commit of corrupt bytes = %v, want ErrDigestMismatch", err)
	}
	_ = sp.Close()
	// A PutBlob whose body fails midway stores nothing either.
	failing := io.MultiReader(bytes.NewReader(data[:1<<20]), iotest.ErrReader(errors.New("connection reset")))
	if err := s.PutBlob(ctx, repo, d, int64(len(data)), failing); err == nil {
		t.Fatal("PutBlob of a failing body succeeded")
	}
	if keys := s3Keys(t, srv, bucket, prefix); len(keys) != 0 {
		t.Fatalf("failed writes left objects: %q", keys)
	}

	// A good spool is readable while written and stored at Commit.
	sp, err = s.Spool(ctx, d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Write(data[:1000]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1000)
	if _, err := sp.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:1000]) {
		t.Fatalf("ReadAt while writing: %v", err)
	}
	if _, err := sp.Write(data[1000:]); err != nil {
		t.Fatal(err)
	}
	if err := sp.Commit(ctx, repo); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := s.StatBlob(ctx, repo, d); err != nil || n != int64(len(data)) {
		t.Errorf("StatBlob after spool = %d, %v", n, err)
	}
	if left, _ := os.ReadDir(local); len(left) != 0 {
		t.Errorf("local temporary files left: %v", left)
	}
}

func TestS3Quarantine(t *testing.T) {
	t.Parallel()
	s, _, srv, bucket, prefix := s3Pair(t)
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "r"}
	good, bad := []byte("intact content"), []byte("content to corrupt")
	dg, db := digest.SHA256.FromBytes(good), digest.SHA256.FromBytes(bad)
	for _, b := range [][]byte{good, bad} {
		if err := s.PutBlob(ctx, repo, digest.SHA256.FromBytes(b), -1, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	key := prefix + "blobs/sha256/" + db.Encoded()
	if _, err := c.PutObject(ctx, bucket, key, strings.NewReader("rot"), 3, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if where, err := s.Quarantine(ctx, dg); err != nil || where != "" {
		t.Errorf("Quarantine(intact) = %q, %v; want it left in place", where, err)
	}
	where, err := s.Quarantine(ctx, db)
	if err != nil || !strings.HasPrefix(where, "quarantine/sha256-"+db.Encoded()+"-") {
		t.Fatalf("Quarantine(corrupt) = %q, %v", where, err)
	}
	if _, err := s.HasBlob(ctx, db); !errors.Is(err, store.ErrBlobUnknown) {
		t.Errorf("HasBlob after quarantine: %v", err)
	}
	if _, err := s.HasBlob(ctx, dg); err != nil {
		t.Errorf("HasBlob(intact): %v", err)
	}
}

func TestS3OpenErrors(t *testing.T) {
	t.Parallel()
	srv := s3test.Shared(t)
	base := store.S3Options{Bucket: "no-such-bucket", Region: srv.Region, Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, LocalDir: t.TempDir()}
	if _, err := store.NewS3(t.Context(), base); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("NewS3 of a missing bucket = %v, want ErrInvalid", err)
	}
	wrong := base
	wrong.Bucket, wrong.SecretAccessKey = s3Bucket(t, srv), "not-the-secret"
	_, err := store.NewS3(t.Context(), wrong)
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("NewS3 with a wrong secret = %v, want ErrUnavailable", err)
	}
	if err != nil && strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("the secret leaked into %v", err)
	}
	for _, ep := range []string{"ftp://x", "http://h/path", "http://u:p@h"} {
		o := base
		o.Endpoint = ep
		if _, err := store.NewS3(t.Context(), o); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("NewS3(endpoint %q) = %v, want ErrInvalid", ep, err)
		}
	}
}

// TestCopyFSToS3: everything of a filesystem store reaches the S3 store,
// and a second run copies no content again.
func TestCopyFSToS3(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	src, err := store.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dst := newS3(t)
	repo := store.Repo{Registry: "hub", Name: "library/alpine"}
	other := store.Repo{Registry: "local", Name: "team/app"}
	layer := bytes.Repeat([]byte("layer"), 300_000)
	dl := digest.SHA256.FromBytes(layer)
	for _, r := range []store.Repo{repo, other} {
		if err := src.PutBlob(ctx, r, dl, int64(len(layer)), bytes.NewReader(layer)); err != nil {
			t.Fatal(err)
		}
	}
	img := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":"` + string(dl) + `"}]}`)
	mi := store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.SHA256.FromBytes(img), Data: img, Source: "dockerhub"}
	checked := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	if err := src.PutManifest(ctx, repo, mi, store.PutManifestOptions{Source: "dockerhub"}); err != nil {
		t.Fatal(err)
	}
	if err := src.SetTag(ctx, repo, "3.20", store.TagInfo{Digest: mi.Digest, Source: "dockerhub", Checked: checked}); err != nil {
		t.Fatal(err)
	}
	sig := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x-sig","subject":{"digest":"` + string(mi.Digest) + `"}}`)
	ms := store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.SHA256.FromBytes(sig), Data: sig}
	if err := src.PutManifest(ctx, repo, ms, store.PutManifestOptions{Subject: &ocispec.Descriptor{Digest: mi.Digest}, Referrer: ocispec.Descriptor{ArtifactType: "application/x-sig"}}); err != nil {
		t.Fatal(err)
	}
	pulled := time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC)
	if err := src.RecordPulls(ctx, repo, map[digest.Digest]time.Time{mi.Digest: pulled}); err != nil {
		t.Fatal(err)
	}

	st, err := store.CopyFS(ctx, dst, src, nil)
	if err != nil {
		t.Fatalf("CopyFS: %v", err)
	}
	if st.Repositories != 2 || st.Manifests != 2 || st.Tags != 1 || st.BlobsCopied != 3 || st.Missing != 0 {
		t.Errorf("CopyFS stats = %+v; want 2 repositories, 2 manifests, 1 tag, 3 contents copied", st)
	}
	if got := readAll(t, dst, other, dl); !bytes.Equal(got, layer) {
		t.Error("layer differs in the destination")
	}
	if ti, err := dst.Tag(ctx, repo, "3.20"); err != nil || ti.Digest != mi.Digest || ti.Source != "dockerhub" || !ti.Checked.Equal(checked) {
		t.Errorf("Tag = %+v, %v; want %s from dockerhub checked %v", ti, err, mi.Digest, checked)
	}
	if m, err := dst.Manifest(ctx, repo, mi.Digest); err != nil || m.Source != "dockerhub" {
		t.Errorf("Manifest = %+v, %v; want source dockerhub", m, err)
	}
	if refs, err := dst.Referrers(ctx, repo, mi.Digest); err != nil || len(refs) != 1 || refs[0].Digest != ms.Digest || refs[0].ArtifactType != "application/x-sig" {
		t.Errorf("Referrers = %+v, %v; want the signature", refs, err)
	}
	if p, err := dst.LastPulled(ctx, repo); err != nil || !p[mi.Digest].Equal(pulled) {
		t.Errorf("LastPulled = %v, %v; want %v", p, err, pulled)
	}
	again, err := store.CopyFS(ctx, dst, src, nil)
	if err != nil || again.BlobsCopied != 0 || again.Blobs != st.Blobs {
		t.Errorf("second CopyFS = %+v, %v; want no content copied", again, err)
	}
}

func readAll(t *testing.T, s store.Store, repo store.Repo, d digest.Digest) []byte {
	t.Helper()
	b, err := s.OpenBlob(t.Context(), repo, d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestS3Unavailable: with the S3 server gone, operations fail with
// ErrUnavailable (a 503 for clients), never as unknown content.
func TestS3Unavailable(t *testing.T) {
	t.Parallel()
	srv, err := s3test.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	bucket := srv.Bucket(t)
	s, err := store.NewS3(t.Context(), store.S3Options{
		Bucket: bucket, Region: srv.Region, Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, LocalDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	repo := store.Repo{Registry: "hub", Name: "r"}
	data := []byte("before the outage")
	d := digest.SHA256.FromBytes(data)
	if err := s.PutBlob(t.Context(), repo, d, -1, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := s.StatBlob(ctx, repo, d); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("StatBlob with S3 down = %v, want ErrUnavailable", err)
	}
	if _, err := s.Tag(ctx, repo, "v1"); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Tag with S3 down = %v, want ErrUnavailable", err)
	}
	if err := s.PutBlob(ctx, repo, d, -1, bytes.NewReader(data)); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("PutBlob with S3 down = %v, want ErrUnavailable", err)
	}
}
