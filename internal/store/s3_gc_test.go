package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/store/s3test"
)

// s3At opens another store on the bucket and prefix of s3Pair.
func s3At(t *testing.T, srv *s3test.Server, bucket, prefix string, opts ...store.Option) *store.S3 {
	t.Helper()
	s, err := store.NewS3(t.Context(), store.S3Options{
		Bucket: bucket, Prefix: prefix, Region: srv.Region, Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, LocalDir: t.TempDir(),
	}, opts...)
	if err != nil {
		t.Fatalf("NewS3: %v", err)
	}
	return s
}

func s3Client(t *testing.T, srv *s3test.Server) *minio.Client {
	t.Helper()
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func s3Exists(t *testing.T, c *minio.Client, bucket, key string) bool {
	t.Helper()
	_, err := c.StatObject(t.Context(), bucket, key, minio.StatObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).StatusCode != 404 {
		t.Fatalf("stat %s: %v", key, err)
	}
	return err == nil
}

func s3Put(t *testing.T, c *minio.Client, bucket, key string, data []byte) {
	t.Helper()
	if _, err := c.PutObject(t.Context(), bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func s3Remove(t *testing.T, c *minio.Client, bucket, key string) {
	t.Helper()
	if err := c.RemoveObject(t.Context(), bucket, key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatalf("remove %s: %v", key, err)
	}
}

func blobKey(prefix string, d digest.Digest) string {
	return prefix + "blobs/" + string(d.Algorithm()) + "/" + d.Encoded()
}

// TestS3GCTouchGrain: within the touch grain a process records a use of a
// blob once, not on every HEAD or GET.
func TestS3GCTouchGrain(t *testing.T) {
	t.Parallel()
	a, b, srv, bucket, prefix := s3Pair(t, store.WithTouchGrain(time.Hour))
	c := s3Client(t, srv)
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "grain"}
	data := []byte("grain layer")
	d := digest.FromBytes(data)
	if err := a.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	marker := prefix + "used/" + strings.TrimPrefix(blobKey(prefix, d), prefix)
	s3Remove(t, c, bucket, marker) // the write's own check of existing content
	if _, err := b.StatBlob(ctx, repo, d); err != nil {
		t.Fatal(err)
	}
	if !s3Exists(t, c, bucket, marker) {
		t.Fatalf("no use marker %s after a first HEAD", marker)
	}
	s3Remove(t, c, bucket, marker)
	for range 3 {
		if _, err := b.StatBlob(ctx, repo, d); err != nil {
			t.Fatal(err)
		}
		rc, err := b.OpenBlob(ctx, repo, d)
		if err != nil {
			t.Fatal(err)
		}
		_ = rc.Close()
	}
	if s3Exists(t, c, bucket, marker) {
		t.Errorf("use marker written again within the touch grain")
	}
}

// TestS3GCUseWaitsForRemoval: a use that finds a content removal under way
// (trash/<key>) waits for it and then answers from what it left.
func TestS3GCUseWaitsForRemoval(t *testing.T) {
	t.Parallel()
	a, _, srv, bucket, prefix := s3Pair(t, store.WithTouchGrain(0))
	c := s3Client(t, srv)
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "wait"}
	for _, removed := range []bool{false, true} {
		data := []byte(fmt.Sprintf("layer removed=%v", removed))
		d := digest.FromBytes(data)
		if err := a.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		key := blobKey(prefix, d)
		trash := prefix + "trash/" + strings.TrimPrefix(key, prefix)
		s3Put(t, c, bucket, trash, []byte(d))
		done := make(chan error, 1)
		go func() { _, err := a.StatBlob(ctx, repo, d); done <- err }()
		select {
		case err := <-done:
			t.Fatalf("StatBlob returned %v during a removal", err)
		case <-time.After(300 * time.Millisecond):
		}
		if removed {
			s3Remove(t, c, bucket, key)
		}
		s3Remove(t, c, bucket, trash)
		err := <-done
		if removed && !errors.Is(err, store.ErrBlobUnknown) {
			t.Errorf("StatBlob after the removal = %v, want ErrBlobUnknown", err)
		}
		if !removed && err != nil {
			t.Errorf("StatBlob after a removal that kept the blob = %v", err)
		}
	}
}

// TestS3GCLinkCacheSafe: a blob link another process removed is not
// trusted from the metadata cache by a HEAD that records a use.
func TestS3GCLinkCacheSafe(t *testing.T) {
	t.Parallel()
	a, b, _, _, _ := s3Pair(t, store.WithTouchGrain(0), store.WithMetadataTTL(time.Hour))
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "cache"}
	data := []byte("cached link")
	d := digest.FromBytes(data)
	if err := a.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.StatBlob(ctx, repo, d); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.RemoveBlobLink(ctx, repo, d, time.Now().Add(time.Hour)); err != nil || !ok {
		t.Fatalf("RemoveBlobLink = %v, %v", ok, err)
	}
	if _, err := a.StatBlob(ctx, repo, d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Errorf("StatBlob on a after b removed the link = %v, want ErrBlobUnknown", err)
	}
}

// TestS3GCRecoverRemovals: what a crash left in trash/ is put back (a
// copied tag) or dropped (a content removal's marker), once stale; entries
// of removals still running are left alone. No key is another's directory.
func TestS3GCRecoverRemovals(t *testing.T) {
	t.Parallel()
	a, _, srv, bucket, prefix := s3Pair(t, store.WithTouchGrain(0))
	c := s3Client(t, srv)
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "crash"}
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
	man := store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.FromBytes(m), Data: m}
	if err := a.PutManifest(ctx, repo, man, store.PutManifestOptions{Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	// A removal of the tag killed after its copy and delete, and one of
	// the content killed after its marker.
	tagKey := prefix + "repos/hub/crash/_tags/v1"
	tagTrash := prefix + "trash/repos/hub/crash/_tags/v1"
	if _, err := c.CopyObject(ctx, minio.CopyDestOptions{Bucket: bucket, Object: tagTrash}, minio.CopySrcOptions{Bucket: bucket, Object: tagKey}); err != nil {
		t.Fatal(err)
	}
	s3Remove(t, c, bucket, tagKey)
	contentTrash := prefix + "trash/" + strings.TrimPrefix(blobKey(prefix, man.Digest), prefix)
	s3Put(t, c, bucket, contentTrash, []byte(man.Digest))

	if n, err := a.RecoverRemovals(ctx); err != nil || n != 0 {
		t.Fatalf("RecoverRemovals of fresh entries = %d, %v; want 0 (still running)", n, err)
	}
	keys := s3Keys(t, srv, bucket, prefix)
	for i, k := range keys {
		for _, other := range keys[i+1:] {
			if strings.HasPrefix(other, k+"/") {
				t.Errorf("key %q is the directory of %q", k, other)
			}
		}
	}
	later := s3At(t, srv, bucket, strings.TrimSuffix(prefix, "/"), store.WithClock(func() time.Time { return time.Now().Add(2 * time.Minute) }))
	if n, err := later.RecoverRemovals(ctx); err != nil || n != 2 {
		t.Fatalf("RecoverRemovals = %d, %v; want 2", n, err)
	}
	if ti, err := later.Tag(ctx, repo, "v1"); err != nil || ti.Digest != man.Digest {
		t.Errorf("Tag after recovery = %v, %v", ti, err)
	}
	for _, k := range []string{tagTrash, contentTrash} {
		if s3Exists(t, c, bucket, k) {
			t.Errorf("%s left after recovery", k)
		}
	}
	if keys := s3Keys(t, srv, bucket, prefix+"trash/"); !slices.Equal(keys, nil) {
		t.Errorf("trash after recovery: %q", keys)
	}
}

// TestS3GCRaceUseAndRemove races a client's HEAD (which records a use
// after the cutoff) in one process with a removal in another, many times:
// the HEAD succeeding while the content or link is removed never happens.
func TestS3GCRaceUseAndRemove(t *testing.T) {
	t.Parallel()
	a, b, _, _, _ := s3Pair(t, store.WithTouchGrain(0))
	ctx := t.Context()
	repo := store.Repo{Registry: "hub", Name: "race"}
	kept, removed := 0, 0
	for i := range 30 {
		data := []byte(fmt.Sprintf("race %d", i))
		d := digest.FromBytes(data)
		if err := a.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		cutoff := time.Now().Add(5 * time.Millisecond)
		time.Sleep(10 * time.Millisecond)
		var statErr error
		var gone bool
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(time.Duration(i%6) * 4 * time.Millisecond) // either may come first
			_, statErr = a.StatBlob(ctx, repo, d)
		}()
		var err error
		if i%2 == 0 {
			_, gone, err = b.RemoveBlob(ctx, d, cutoff)
		} else {
			gone, err = b.RemoveBlobLink(ctx, repo, d, cutoff)
		}
		<-done
		if err != nil {
			t.Fatal(err)
		}
		if statErr == nil && gone {
			t.Fatalf("round %d: HEAD succeeded and the blob was removed", i)
		}
		if statErr != nil && !errors.Is(statErr, store.ErrBlobUnknown) {
			t.Fatalf("round %d: StatBlob: %v", i, statErr)
		}
		if gone {
			removed++
		} else {
			kept++
		}
	}
	t.Logf("kept %d, removed %d", kept, removed)
}

// BenchmarkS3GCUse is a warm blob HEAD on S3 with the default touch grain
// (a use written once) and with none (a use written on every HEAD).
func BenchmarkS3GCUse(b *testing.B) {
	for _, grain := range []time.Duration{store.DefaultTouchGrain, 0} {
		b.Run("grain="+grain.String(), func(b *testing.B) {
			s := newS3Bench(b, store.WithTouchGrain(grain))
			repo := store.Repo{Registry: "hub", Name: "bench"}
			data := []byte("bench layer")
			d := digest.FromBytes(data)
			if err := s.PutBlob(b.Context(), repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := s.StatBlob(b.Context(), repo, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkS3GCRemoveBlob removes unused content, one blob per op.
func BenchmarkS3GCRemoveBlob(b *testing.B) {
	s := newS3Bench(b)
	repo := store.Repo{Registry: "hub", Name: "bench"}
	var ds []digest.Digest
	for i := range b.N {
		data := []byte(fmt.Sprintf("bench removal %d", i))
		d := digest.FromBytes(data)
		if err := s.PutBlob(b.Context(), repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, d)
	}
	cutoff := time.Now().Add(time.Second)
	b.ResetTimer()
	for _, d := range ds {
		if _, ok, err := s.RemoveBlob(b.Context(), d, cutoff); err != nil || !ok {
			b.Fatalf("RemoveBlob = %v, %v", ok, err)
		}
	}
}

func newS3Bench(b *testing.B, opts ...store.Option) *store.S3 {
	b.Helper()
	srv := s3test.Shared(b)
	s, err := store.NewS3(b.Context(), store.S3Options{
		Bucket: srv.Bucket(b), Prefix: fmt.Sprintf("bench%d/", s3Stores.Add(1)), Region: srv.Region,
		Endpoint: srv.Endpoint, PathStyle: true, AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		LocalDir: b.TempDir(),
	}, opts...)
	if err != nil {
		b.Fatalf("NewS3: %v", err)
	}
	return s
}
