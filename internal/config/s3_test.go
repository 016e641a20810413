package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestS3Config(t *testing.T) {
	c := mustParse(t, `storage:
  s3: {bucket: regwarm, prefix: "a/b/", endpoint: "https://s3.example:9000", path_style: true,
       access_key_id_env: RW_TEST_S3_ID, secret_access_key_env: RW_TEST_S3_SECRET, redirect: true}
`)
	if c.Storage.Filesystem.Root != "" || c.Storage.S3.Region != "us-east-1" {
		t.Errorf("defaults: filesystem root %q, region %q; want none and us-east-1", c.Storage.Filesystem.Root, c.Storage.S3.Region)
	}
	t.Setenv("RW_TEST_S3_ID", "AKIDEXAMPLE")
	t.Setenv("RW_TEST_S3_SECRET", "")
	err := c.CheckSecrets()
	if !errors.Is(err, ErrSecret) || !strings.Contains(err.Error(), `storage.s3.secret_access_key_env: "RW_TEST_S3_SECRET": environment variable is empty`) {
		t.Errorf("CheckSecrets = %v, want the empty secret named", err)
	}
	t.Setenv("RW_TEST_S3_SECRET", "wJalrXUtnFEMI")
	if err := c.CheckSecrets(); err != nil {
		t.Errorf("CheckSecrets with both set: %v", err)
	}
	if ttl := c.Storage.S3.MetadataTTLOrDefault(); ttl != time.Second {
		t.Errorf("default metadata_ttl = %v, want 1s", ttl)
	}
	if c0 := mustParse(t, "storage: {s3: {bucket: abc, metadata_ttl: 0s}}\n"); c0.Storage.S3.MetadataTTLOrDefault() != 0 {
		t.Errorf("metadata_ttl: 0s = %v, want 0", c0.Storage.S3.MetadataTTLOrDefault())
	}
	if id, secret := c.Storage.S3.Credentials(); id != "AKIDEXAMPLE" || secret != "wJalrXUtnFEMI" {
		t.Errorf("Credentials() = %q, %q", id, secret)
	}
}

func TestS3ConfigInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"no bucket", `{s3: {}}`, []string{"storage.s3.bucket: required"}},
		{"bad bucket", `{s3: {bucket: My_Bucket}}`, []string{`storage.s3.bucket: "My_Bucket": must be`}},
		{"both backends", `{filesystem: {root: /x}, s3: {bucket: abc}}`, []string{"storage: set exactly one of filesystem and s3"}},
		{"endpoint scheme", `{s3: {bucket: abc, endpoint: "ftp://h"}}`, []string{`storage.s3.endpoint: "ftp://h": must be http(s)://host[:port]`}},
		{"endpoint path", `{s3: {bucket: abc, endpoint: "https://h/x"}}`, []string{`storage.s3.endpoint: "https://h/x"`}},
		{"prefix dotdot", `{s3: {bucket: abc, prefix: "a/../b"}}`, []string{`storage.s3.prefix: "a/../b"`}},
		{"one env", `{s3: {bucket: abc, access_key_id_env: ID}}`, []string{"storage.s3.secret_access_key_env", "or neither"}},
		{"metadata ttl", `{s3: {bucket: abc, metadata_ttl: 2m}}`, []string{"storage.s3.metadata_ttl: 2m0s: must be between 0s and 1m"}},
		{"env name", `{s3: {bucket: abc, access_key_id_env: "A-B", secret_access_key_env: S}}`, []string{`storage.s3.access_key_id_env: "A-B": must be an environment variable name`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte("version: 1\nstorage: " + tc.yaml + "\n"))
			if err == nil {
				t.Fatalf("Validate accepted %s", tc.yaml)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %v; want %q", err, w)
				}
			}
		})
	}
}
