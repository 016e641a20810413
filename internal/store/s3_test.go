package store_test

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

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
