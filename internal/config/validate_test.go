package config

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   []string
	}{
		// general
		{"version", func(c *Config) { c.Version = 2 }, []string{"version: 2: must be 1"}},
		{"data_dir", func(c *Config) { c.DataDir = "" }, []string{"data_dir: required"}},
		{"log level", func(c *Config) { c.Log.Level = "verbose" }, []string{`log.level: "verbose": must be one of debug, info, warn, error`}},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, []string{`log.format: "xml": must be one of text, json`}},
		{"listen without port", func(c *Config) { c.Serve.Listen = "localhost" }, []string{`serve.listen: "localhost": must be host:port`}},
		{"listen port range", func(c *Config) { c.Serve.Listen = "127.0.0.1:99999" }, []string{`serve.listen: "127.0.0.1:99999": port must be`}},
		{"listen bad host", func(c *Config) { c.Metrics.Listen = "bad host:80" }, []string{`metrics.listen: "bad host:80": host must be`}},
		{"listen clash", func(c *Config) { c.Metrics.Listen = c.Serve.Listen }, []string{`metrics.listen: "0.0.0.0:5000": same address as serve.listen`}},
		{"tls cert only", func(c *Config) { c.Serve.TLS.KeyFile = "" }, []string{"serve.tls.key_file: required when cert_file is set"}},
		{"tls key only", func(c *Config) { c.Serve.TLS.CertFile = "" }, []string{"serve.tls.cert_file: required when key_file is set"}},
		{"storage root", func(c *Config) { c.Storage.Filesystem.Root = "" }, []string{"storage.filesystem.root: required"}},

		// nats
		{"nats url scheme", func(c *Config) { c.NATS.URL = "nats://a:4222,http://b:4222" }, []string{`nats.url[1]: "http://b:4222": scheme must be one of nats, tls, ws, wss`}},
		{"nats url empty item", func(c *Config) { c.NATS.URL = "nats://a:4222," }, []string{"nats.url[1]", "empty URL"}},
		{"nats url no host", func(c *Config) { c.NATS.URL = "nats://" }, []string{`nats.url[0]: "nats://": needs a host`}},
		{"nats url redacted", func(c *Config) { c.NATS.URL = "http://u:s3cret@b:4222" }, []string{`nats.url[0]: "http://xxxxx@b:4222"`}},
		{"nats embedded listen", func(c *Config) { c.NATS.Embedded.Listen = "4222" }, []string{`nats.embedded.listen: "4222"`}},
		{"nats store dir", func(c *Config) { c.NATS.Embedded.StoreDir = "" }, []string{"nats.embedded.store_dir: required"}},
		{"nats embedded remote", func(c *Config) { c.NATS.URL, c.NATS.Embedded.Listen = "", "0.0.0.0:4222" }, []string{`nats.embedded.listen: "0.0.0.0:4222": is not a loopback address: set nats.embedded.allow_remote: true`}},
		{"nats embedded all interfaces", func(c *Config) { c.NATS.URL, c.NATS.Embedded.Listen = "", ":4222" }, []string{`nats.embedded.listen: ":4222": is not a loopback address`}},
		{"subject wildcard", func(c *Config) { c.NATS.SubjectPrefix = "regwarm.*" }, []string{`nats.subject_prefix: "regwarm.*"`}},
		{"subject empty token", func(c *Config) { c.NATS.SubjectPrefix = "a..b" }, []string{`nats.subject_prefix: "a..b"`}},

		// registries
		{"registry name case", func(c *Config) { c.Registries[1].Name = "Hub" }, []string{`registries[1].name: "Hub": must match [a-z0-9][a-z0-9_-]*`}},
		{"registry name underscore", func(c *Config) { c.Registries[1].Name = "_catalog" }, []string{`registries[1].name: "_catalog": must match`}},
		{"registry name empty", func(c *Config) { c.Registries[1].Name = "" }, []string{`registries[1].name: "": must match`}},
		{"registry name long", func(c *Config) { c.Registries[1].Name = strings.Repeat("a", 65) }, []string{"registries[1].name", "at most 64"}},
		{"registry name reserved", func(c *Config) { c.Registries[1].Name = "v2" }, []string{`registries[1].name: "v2": reserved`}},
		{"registry duplicate", func(c *Config) { c.Registries[2].Name = "hub" }, []string{`registries[2].name: "hub": duplicate: registries[0]`}},
		{"two defaults", func(c *Config) { c.Registries[2].Default = true }, []string{`registries[2].default: true: only one registry may be the default; registries[0] ("hub")`}},
		{"no push no connector", func(c *Config) { c.Registries[1].Push = false }, []string{"registries[1]: needs push: true or at least one connector"}},
		{"unknown connector", func(c *Config) { c.Registries[0].Connectors[1] = "quay" }, []string{`registries[0].connectors[1]: "quay": no connector has this name`}},
		{"connector twice", func(c *Config) { c.Registries[0].Connectors[1] = "dockerhub" }, []string{`registries[0].connectors[1]: "dockerhub": listed twice (also connectors[0])`}},
		{"negative ttl", func(c *Config) { c.Registries[0].TagTTL = -Duration(1e9) }, []string{`registries[0].tag_ttl: "-1s": must not be negative`}},
		{"platform no arch", func(c *Config) { c.Registries[0].Sync.Platforms = []string{"linux"} }, []string{`registries[0].sync.platforms[0]: "linux": must be os/arch`}},
		{"platform upper", func(c *Config) { c.Registries[0].Sync.Platforms = []string{"linux/amd64", "Linux/arm64"} }, []string{`registries[0].sync.platforms[1]: "Linux/arm64"`}},
		{"platform too long", func(c *Config) { c.Registries[0].Sync.Platforms = []string{"linux/arm/v7/x"} }, []string{`registries[0].sync.platforms[0]: "linux/arm/v7/x"`}},
		{"empty registries", func(c *Config) { c.Registries = []Registry{} }, []string{"registries: at least one registry is required"}},
		{"library shadowed", func(c *Config) { c.Registries[1].Name = "library"; c.Connectors[2].Registry = "library" }, []string{`registries[1].name: "library": shadows Docker Hub`}},

		// connectors
		{"connector name", func(c *Config) { c.Connectors[1].Name = "GHCR"; c.Registries[0].Connectors[1] = "GHCR" }, []string{`connectors[1].name: "GHCR": must match`}},
		{"connector duplicate", func(c *Config) { c.Connectors[1].Name = "dockerhub" }, []string{`connectors[1].name: "dockerhub": duplicate: connectors[0]`}},
		{"url and registry", func(c *Config) { c.Connectors[0].Registry = "release" }, []string{"connectors[0]: set url or registry, not both"}},
		{"auth host with scheme", func(c *Config) { c.Connectors[0].AuthHosts = []string{"auth.example", "https://auth.example"} }, []string{`connectors[0].auth_hosts[1]: "https://auth.example": must be a host name without scheme`}},
		{"upload expiry", func(c *Config) { c.Serve.UploadExpiry = -1 }, []string{"serve.upload_expiry: -1ns: must be positive"}},
		{"max uploads", func(c *Config) { c.Serve.MaxUploads = -1 }, []string{"serve.max_uploads: -1: must be positive"}},
		{"neither url nor registry", func(c *Config) { c.Connectors[0].URL = "" }, []string{"connectors[0]: needs url"}},
		{"url scheme", func(c *Config) { c.Connectors[0].URL = "ftp://registry-1.docker.io" }, []string{`connectors[0].url: "ftp://registry-1.docker.io": scheme must be http or https`}},
		{"url no scheme", func(c *Config) { c.Connectors[0].URL = "registry-1.docker.io" }, []string{`connectors[0].url: "registry-1.docker.io": scheme must be`}},
		{"url no host", func(c *Config) { c.Connectors[0].URL = "https://" }, []string{`connectors[0].url: "https://": needs a host`}},
		{"url credentials", func(c *Config) { c.Connectors[0].URL = "https://bot:s3cret@registry-1.docker.io" }, []string{`connectors[0].url: "https://xxxxx@registry-1.docker.io": must not contain credentials`}},
		{"url unparsable credentials", func(c *Config) { c.Connectors[0].URL = "https://bot:s3cret@reg%zz" }, []string{`connectors[0].url: "https://xxxxx@reg%zz": not a valid URL`}},
		{"url query", func(c *Config) { c.Connectors[0].URL = "https://r.io/?x=1" }, []string{`connectors[0].url: "https://r.io/?x=1": must not have a query`}},
		{"url bad port", func(c *Config) { c.Connectors[0].URL = "https://r.io:0" }, []string{`connectors[0].url: "https://r.io:0": host port must be`}},
		{"registry unknown", func(c *Config) { c.Connectors[2].Registry = "staging" }, []string{`connectors[2].registry: "staging": no registry has this name`}},
		{"local with credentials", func(c *Config) { c.Connectors[2].Username = "x"; c.Connectors[2].PasswordEnv = "Y" }, []string{"connectors[2].username: only applies to url connectors", "connectors[2].password_env: only applies"}},
		{"host with scheme", func(c *Config) { c.Connectors[0].Host = "https://docker.io" }, []string{`connectors[0].host: "https://docker.io": must be a host name without scheme`}},
		{"host with path", func(c *Config) { c.Connectors[0].Host = "docker.io/library" }, []string{`connectors[0].host: "docker.io/library": must be hostname[:port] without path`}},
		{"host bad port", func(c *Config) { c.Connectors[0].Host = "docker.io:x" }, []string{`connectors[0].host: "docker.io:x": port must be`}},
		{"host bad name", func(c *Config) { c.Connectors[0].Host = "docker_io" }, []string{`connectors[0].host: "docker_io": must be hostname[:port]`}},
		{"host duplicate", func(c *Config) { c.Connectors[1].Host = "DOCKER.io" }, []string{`connectors[1].host: "DOCKER.io": same host as connectors[0] ("dockerhub")`}},
		{"host duplicate alias", func(c *Config) { c.Connectors[1].Host = "index.docker.io" }, []string{`connectors[1].host: "index.docker.io": same host as connectors[0]`}},
		{"password env and file", func(c *Config) { c.Connectors[0].PasswordFile = "/x" }, []string{`connectors[0].password_file: "/x": set password_env or password_file, not both`}},
		{"password without username", func(c *Config) { c.Connectors[1].Username = "" }, []string{"connectors[1].username: required when a password is set"}},
		{"bad include", func(c *Config) { c.Connectors[0].Include = []string{"library/*", "lib[rary"} }, []string{`connectors[0].include[1]: "lib[rary": not a valid glob`}},
		{"empty exclude", func(c *Config) { c.Connectors[0].Exclude = []string{""} }, []string{`connectors[0].exclude[0]: "": empty pattern`}},
		{"concurrency", func(c *Config) { c.Connectors[0].Concurrency = -1 }, []string{"connectors[0].concurrency: -1: must be at least 1"}},
		{"max manifest entries negative", func(c *Config) { c.Connectors[0].MaxManifestEntries = -1 }, []string{"connectors[0].max_manifest_entries: -1: must be from 1 to 10000"}},
		{"max manifest entries over the cap", func(c *Config) { c.Connectors[1].MaxManifestEntries = 10001 }, []string{"connectors[1].max_manifest_entries: 10001: must be from 1 to 10000"}},

		// worker
		{"worker concurrency", func(c *Config) { c.Worker.Concurrency = 0 }, []string{"worker.concurrency: 0: must be at least 1"}},
		{"worker deliveries", func(c *Config) { c.Worker.MaxDeliveries = -2 }, []string{"worker.max_deliveries: -2: must be at least 1"}},

		// auth
		{"htpasswd", func(c *Config) { c.Auth.HtpasswdFile = "" }, []string{"auth.htpasswd_file: required when auth is present"}},
		{"rule registry", func(c *Config) { c.Auth.Rules[0].Registry = "nope" }, []string{`auth.rules[0].registry: "nope": no registry has this name`}},
		{"rule users empty", func(c *Config) { c.Auth.Rules[1].Users = nil }, []string{"auth.rules[1].users: at least one user is required"}},
		{"rule user blank", func(c *Config) { c.Auth.Rules[1].Users = []string{"ci", " "} }, []string{`auth.rules[1].users[1]: " ": empty user name`}},
		{"rule allow", func(c *Config) { c.Auth.Rules[1].Allow = []string{"pull", "write"} }, []string{`auth.rules[1].allow[1]: "write": must be one of pull, push, delete`}},

		// jobs
		{"schedule fields", func(c *Config) { c.Jobs.DanglingScan.Schedule = "0 3 * *" }, []string{`jobs.dangling_scan.schedule: "0 3 * *"`}},
		{"schedule range", func(c *Config) { c.Jobs.Verify.Schedule = "61 * * * *" }, []string{`jobs.verify.schedule: "61 * * * *"`}},
		{"schedule descriptor", func(c *Config) { c.Jobs.Refresh.Schedule = "@sometimes" }, []string{`jobs.refresh.schedule: "@sometimes"`}},
		{"schedule seconds", func(c *Config) { c.Jobs.Refresh.Schedule = "0 0 3 * * *" }, []string{`jobs.refresh.schedule: "0 0 3 * * *"`}},
		{"schedule zone", func(c *Config) { c.Jobs.Verify.Schedule = "CRON_TZ=Mars/Olympus 0 3 * * *" }, []string{`jobs.verify.schedule: "CRON_TZ=Mars/Olympus 0 3 * * *"`}},
		{"verify rate", func(c *Config) { c.Jobs.Verify.MaxBytesPerSecond = -1 }, []string{"jobs.verify.max_bytes_per_second: -1: must not be negative"}},
		{"gc delay", func(c *Config) { c.Jobs.GC.Delay = Duration(-60e9) }, []string{`jobs.gc.delay: "-1m0s": must not be negative`}},
		{"gc schedule", func(c *Config) { c.Jobs.GC.Schedule = "@sometimes" }, []string{`jobs.gc.schedule: "@sometimes"`}},
		{"gc watermark", func(c *Config) { c.Jobs.GC.DiskWatermark = -1 }, []string{"jobs.gc.disk_watermark: -1: must not be negative"}},
		{"image without registry", func(c *Config) { c.Jobs.Refresh.Images = []string{"alpine:3"} }, []string{`jobs.refresh.images[0]: "alpine:3": must be <registry>/<repo>:<tag-or-glob>`}},
		{"image unknown registry", func(c *Config) { c.Jobs.Refresh.Images[1] = "docker.io/library/alpine:3" }, []string{`jobs.refresh.images[1]: "docker.io/library/alpine:3": no registry named "docker.io"`}},
		{"image without tag", func(c *Config) { c.Jobs.Refresh.Images[0] = "hub/library/alpine" }, []string{`jobs.refresh.images[0]: "hub/library/alpine"`, "tag is missing"}},
		{"image digest", func(c *Config) { c.Jobs.Refresh.Images[0] = "hub/alpine@sha256:abc" }, []string{`jobs.refresh.images[0]: "hub/alpine@sha256:abc"`}},
		{"image repo", func(c *Config) { c.Jobs.Refresh.Images[0] = "hub/Library/alpine:3" }, []string{`jobs.refresh.images[0]: "hub/Library/alpine:3": repository "Library/alpine" is not a valid name`}},
		{"image tag", func(c *Config) { c.Jobs.Refresh.Images[0] = "hub/alpine:-x" }, []string{`tag "-x" is not valid`}},
		{"image tag glob", func(c *Config) { c.Jobs.Refresh.Images[0] = "hub/alpine:[3" }, []string{`tag pattern "[3" is not a valid glob`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, full)
			tt.mutate(c)
			err := c.Validate()
			wantErr(t, err, ErrInvalid, tt.want...)
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows a secret: %v", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %v is not a *FieldError", err)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(c *Config)
	}{
		{"disabled jobs", func(c *Config) {
			c.Jobs.DanglingScan.Schedule, c.Jobs.Verify.Schedule, c.Jobs.Refresh.Schedule = "", "", ""
		}},
		{"descriptors", func(c *Config) { c.Jobs.Verify.Schedule, c.Jobs.Refresh.Schedule = "@every 1h", "TZ=UTC @hourly" }},
		{"ephemeral ports", func(c *Config) { c.Serve.Listen, c.Metrics.Listen, c.NATS.Embedded.Listen = ":0", ":0", "127.0.0.1:0" }},
		{"ipv6 listen", func(c *Config) { c.Serve.Listen = "[::1]:5000" }},
		{"hostname listen", func(c *Config) { c.Serve.Listen = "localhost:5000" }},
		{"host with port", func(c *Config) { c.Connectors[1].Host = "localhost:5000" }},
		{"ipv6 host", func(c *Config) { c.Connectors[1].Host = "[::1]:5000" }},
		{"no host", func(c *Config) { c.Connectors[1].Host = "" }},
		{"username only", func(c *Config) { c.Connectors[1].PasswordFile = "" }},
		{"url with path", func(c *Config) { c.Connectors[1].URL = "https://mirror.example.com/dockerhub/" }},
		{"nats websockets", func(c *Config) { c.NATS.URL = "ws://a:80,wss://b:443,nats://u:p@c:4222" }},
		{"no nats url", func(c *Config) { c.NATS.URL = "" }},
		{"nats embedded remote allowed", func(c *Config) {
			c.NATS.URL, c.NATS.Embedded.Listen, c.NATS.Embedded.AllowRemote = "", "0.0.0.0:4222", true
		}},
		{"nats embedded unused", func(c *Config) { c.NATS.Embedded.Listen = "0.0.0.0:4222" }},
		{"nats embedded loopback", func(c *Config) { c.NATS.URL, c.NATS.Embedded.Listen = "", "[::1]:4222" }},
		{"nats embedded localhost", func(c *Config) { c.NATS.URL, c.NATS.Embedded.Listen = "", "localhost:4222" }},
		{"no auth", func(c *Config) { c.Auth = nil }},
		{"auth without rules", func(c *Config) { c.Auth.Rules = nil }},
		{"zero ttl", func(c *Config) { c.Registries[0].TagTTL = 0 }},
		{"push registry with connectors", func(c *Config) { c.Registries[0].Push = true }},
		{"library without docker hub default", func(c *Config) {
			c.Registries[0].Default = false
			c.Registries[1].Name = "library"
			c.Connectors[2].Registry = "library"
		}},
		{"tag glob", func(c *Config) { c.Jobs.Refresh.Images = []string{"hub/library/alpine:3.*", "hub/a/b/c:latest"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, full)
			tt.mutate(c)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	in := `
version: 3
log: {level: loud}
registries:
  - name: Hub
  - name: ok
    connectors: [missing]
connectors:
  - name: x
    url: ftp://x
worker: {concurrency: -1}
jobs:
  verify: {schedule: "never"}
`
	_, err := Parse([]byte(in))
	want := []string{
		"version: 3: must be 1",
		`log.level: "loud"`,
		`registries[0].name: "Hub"`,
		"registries[0]: needs push: true or at least one connector",
		`registries[1].connectors[0]: "missing"`,
		`connectors[0].url: "ftp://x"`,
		"worker.concurrency: -1",
		`jobs.verify.schedule: "never"`,
	}
	wantErr(t, err, ErrInvalid, want...)
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %T is not joined", err)
	}
	if n := len(joined.Unwrap()); n != len(want) {
		t.Errorf("got %d problems, want %d:\n%v", n, len(want), err)
	}
}

func TestValidateCycles(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want []string // empty: valid
	}{
		{"two registries", `
registries:
  - {name: release, push: true, connectors: [prerelease]}
  - {name: prerelease, push: true, connectors: [release]}
connectors:
  - {name: prerelease, registry: prerelease}
  - {name: release, registry: release}
`, []string{`registries[1].connectors[0]: "release": connector chain forms a cycle: release -> prerelease -> release`}},
		{"self", `
registries:
  - {name: a, push: true, connectors: [self]}
connectors:
  - {name: self, registry: a}
`, []string{"cycle: a -> a"}},
		{"three, entered midway", `
registries:
  - {name: x, push: true, connectors: [to-a]}
  - {name: a, connectors: [to-b]}
  - {name: b, connectors: [to-c]}
  - {name: c, connectors: [to-a]}
connectors:
  - {name: to-a, registry: a}
  - {name: to-b, registry: b}
  - {name: to-c, registry: c}
`, []string{`registries[3].connectors[0]: "to-a": connector chain forms a cycle: a -> b -> c -> a`}},
		{"diamond is fine", `
registries:
  - {name: top, connectors: [to-l, to-r]}
  - {name: l, connectors: [to-base]}
  - {name: r, connectors: [to-base]}
  - {name: base, push: true}
connectors:
  - {name: to-l, registry: l}
  - {name: to-r, registry: r}
  - {name: to-base, registry: base}
`, nil},
		{"chain is fine", `
registries:
  - {name: release, push: true, connectors: [prerelease]}
  - {name: prerelease, push: true}
connectors:
  - {name: prerelease, registry: prerelease}
`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte("version: 1\n" + tt.in))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			wantErr(t, err, ErrInvalid, tt.want...)
			if n := strings.Count(err.Error(), "cycle"); n != 1 {
				t.Errorf("cycle reported %d times:\n%v", n, err)
			}
		})
	}
}
