package config

import (
	"errors"
	"strings"
	"testing"
)

// full is a valid configuration that sets every key.
const full = `
version: 1
data_dir: /var/lib/regwarm
log: {level: debug, format: json}
serve:
  listen: 0.0.0.0:5000
  tls: {cert_file: /etc/regwarm/tls.crt, key_file: /etc/regwarm/tls.key}
metrics:
  listen: ":9090"
storage:
  filesystem: {root: /srv/store}
nats:
  url: nats://n1:4222, tls://n2:4222
  embedded: {listen: 127.0.0.1:4222, store_dir: /srv/nats}
  credentials_file: /etc/regwarm/nats.creds
  subject_prefix: regwarm.prod
registries:
  - name: hub
    default: true
    push: false
    connectors: [dockerhub, ghcr]
    tag_ttl: 10m
    sync: {platforms: [linux/amd64, linux/arm/v7], referrers: false}
  - name: prerelease
    push: true
  - name: release
    push: true
    connectors: [prerelease]
connectors:
  - name: dockerhub
    url: https://registry-1.docker.io
    host: docker.io
    username: bot
    password_env: HUB_TOKEN
    include: ["library/*"]
    exclude: ["library/windows*"]
    concurrency: 8
  - name: ghcr
    url: http://ghcr.internal:5000
    host: ghcr.io
    username: bot
    password_file: /run/secrets/ghcr
  - name: prerelease
    registry: prerelease
worker: {concurrency: 2, max_deliveries: 3}
auth:
  htpasswd_file: /etc/regwarm/htpasswd
  rules:
    - {registry: hub, users: [anonymous], allow: [pull]}
    - {registry: release, users: [ci], allow: [pull, push, delete]}
    - {registry: "*", users: [admin], allow: [pull, push, delete]}
jobs:
  dangling_scan: {schedule: "CRON_TZ=UTC 0 3 * * *", repair: true}
  verify: {schedule: "@daily", max_bytes_per_second: 1048576}
  refresh: {schedule: "*/5 * * * *", images: ["hub/library/alpine:3", "release/app:v1.*"]}
`

// mustParse parses s or fails the test.
func mustParse(t *testing.T, s string) *Config {
	t.Helper()
	if !strings.Contains(s, "version:") && !strings.HasPrefix(s, "{") {
		s = "version: 1\n" + s // required; these tests are about other keys
	}
	c, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

// wantErr fails unless err is non-nil, matches kind and contains every want.
func wantErr(t *testing.T, err, kind error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Errorf("error %q does not match %v", err, kind)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q:\n%v", w, err)
		}
	}
}
