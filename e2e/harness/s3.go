package harness

import (
	"fmt"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/regwarm/regwarm/internal/store/s3test"
)

// S3 is a versitygw S3 server with one bucket, "regwarm", for the test.
type S3 struct {
	*s3test.Server
	Bucket string
}

// Environment variables that carry the S3 keys to regwarm processes.
const (
	S3KeyEnv    = "REGWARM_E2E_S3_KEY"
	S3SecretEnv = "REGWARM_E2E_S3_SECRET"
)

// StartS3 starts versitygw over a temporary directory (stopped by
// t.Cleanup) and creates bucket "regwarm". A missing versitygw fails the
// test with the command that installs it.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	srv, err := s3test.Start()
	if err != nil {
		t.Fatalf("StartS3: %v", err)
	}
	t.Cleanup(srv.Stop)
	s := &S3{Server: srv, Bucket: "regwarm"}
	if err := srv.MakeBucket(t.Context(), s.Bucket); err != nil {
		t.Fatalf("StartS3: %v", err)
	}
	return s
}

// Storage is the storage section of a regwarm config on this server's
// bucket, with extra settings ("redirect: true") if any; the processes
// need Env.
func (s *S3) Storage(extra ...string) string {
	more := ""
	for _, e := range extra {
		more += ", " + e
	}
	return fmt.Sprintf("storage: {s3: {bucket: %s, region: %s, endpoint: %q, path_style: true, access_key_id_env: %s, secret_access_key_env: %s%s}}\n",
		s.Bucket, s.Region, s.Endpoint, S3KeyEnv, S3SecretEnv, more)
}

// Env holds the keys for the variables Storage names.
func (s *S3) Env() []string {
	return []string{S3KeyEnv + "=" + s.AccessKey, S3SecretEnv + "=" + s.SecretKey}
}

// Keys lists the keys of the bucket under prefix.
func (s *S3) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for obj := range c.ListObjects(t.Context(), s.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			t.Fatalf("list %s: %v", prefix, obj.Err)
		}
		keys = append(keys, obj.Key)
	}
	return keys
}
