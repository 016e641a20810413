// Package config loads, defaults and validates regwarm's YAML configuration.
package config

import (
	"fmt"
	"os"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	Version    int         `yaml:"version"`
	DataDir    string      `yaml:"data_dir"`
	Log        Log         `yaml:"log"`
	Serve      Serve       `yaml:"serve"`
	Metrics    Metrics     `yaml:"metrics"`
	Storage    Storage     `yaml:"storage"`
	NATS       NATS        `yaml:"nats"`
	Registries []Registry  `yaml:"registries"`
	Connectors []Connector `yaml:"connectors"`
	Worker     Worker      `yaml:"worker"`
	Auth       *Auth       `yaml:"auth"`
	Jobs       Jobs        `yaml:"jobs"`
	Webhooks   []Webhook   `yaml:"webhooks"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // text | json
}

// Serve configures the registry API listener.
type Serve struct {
	Listen string `yaml:"listen"`
	TLS    TLS    `yaml:"tls"`

	// ExternalURL is scheme://host[:port] as clients reach the API; the
	// token realm is built from it (empty: from listen), never from a
	// request's Host header.
	ExternalURL string `yaml:"external_url"`
	// MaxConnections caps open API connections; MaxConnectionsPerClient
	// caps them per client IP address. Over a cap a connection is refused.
	MaxConnections          int `yaml:"max_connections"`
	MaxConnectionsPerClient int `yaml:"max_connections_per_client"`
	// HeaderTimeout bounds reading a request's headers; BodyIdleTimeout
	// bounds a read of a request body that makes no progress.
	HeaderTimeout   Duration `yaml:"header_timeout"`
	BodyIdleTimeout Duration `yaml:"body_idle_timeout"`
	// UploadExpiry is how long an upload session may stay idle (no chunk
	// received) before it is discarded.
	UploadExpiry Duration `yaml:"upload_expiry"`
	// MaxUploads caps the open upload sessions per repository and per user.
	MaxUploads int `yaml:"max_uploads"`
}

// TLS names a certificate and key; both empty means plain HTTP.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Metrics configures the /metrics, /healthz and /readyz listener.
type Metrics struct {
	Listen string `yaml:"listen"`
}

// Storage selects the content store backend: the filesystem, or S3 when
// S3 is set.
type Storage struct {
	Filesystem Filesystem `yaml:"filesystem"`
	S3         *S3        `yaml:"s3"`
}

// S3 is the S3 store backend: the whole store in one bucket that any number
// of serve and worker processes share. Credentials come from the named
// environment variables, else from the AWS default chain; they are never
// in the file.
type S3 struct {
	Bucket             string `yaml:"bucket"`
	Prefix             string `yaml:"prefix"`     // key prefix; "a/b" and "a/b/" mean the same
	Region             string `yaml:"region"`     // default us-east-1
	Endpoint           string `yaml:"endpoint"`   // http(s)://host[:port] of an S3-compatible server; empty: AWS
	PathStyle          bool   `yaml:"path_style"` // bucket in the path, not the host name
	AccessKeyIDEnv     string `yaml:"access_key_id_env"`
	SecretAccessKeyEnv string `yaml:"secret_access_key_env"`
	// Redirect answers warm blob GETs with a redirect to a presigned URL.
	Redirect bool `yaml:"redirect"`
	// MetadataTTL is how long a process trusts the tags and manifest links
	// it read; nil means one second, 0 reads the bucket every time.
	MetadataTTL *Duration `yaml:"metadata_ttl"`
}

// DefaultS3MetadataTTL is storage.s3.metadata_ttl when unset.
const DefaultS3MetadataTTL = time.Second

// MetadataTTLOrDefault returns metadata_ttl, or its default when unset.
func (s *S3) MetadataTTLOrDefault() time.Duration {
	if s.MetadataTTL == nil {
		return DefaultS3MetadataTTL
	}
	return s.MetadataTTL.D()
}

// Credentials returns the static credentials named by the env settings,
// or two empty strings when none are named (the AWS default chain).
func (s *S3) Credentials() (accessKeyID, secretAccessKey string) {
	if s.AccessKeyIDEnv == "" && s.SecretAccessKeyEnv == "" {
		return "", ""
	}
	return os.Getenv(s.AccessKeyIDEnv), os.Getenv(s.SecretAccessKeyEnv)
}

// Filesystem is the filesystem store backend.
type Filesystem struct {
	Root string `yaml:"root"` // default <data_dir>/store
	// GroupReadable creates files 0640 and directories 0750 instead of
	// 0600 and 0700.
	GroupReadable bool `yaml:"group_readable"`
}

// NATS configures the message bus.
type NATS struct {
	URL             string       `yaml:"url"` // empty: embedded server
	Embedded        NATSEmbedded `yaml:"embedded"`
	CredentialsFile string       `yaml:"credentials_file"`
	SubjectPrefix   string       `yaml:"subject_prefix"`
	Username        string       `yaml:"username"`     // user/password auth to an external server
	PasswordEnv     string       `yaml:"password_env"` // environment variable holding the password
	TLS             NATSTLS      `yaml:"tls"`
	Replicas        int          `yaml:"replicas"` // JetStream replicas for streams and buckets (3 on a cluster)
}

// NATSTLS configures TLS to an external NATS server.
type NATSTLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// NATSEmbedded configures the embedded NATS server of `regwarm run`.
type NATSEmbedded struct {
	Listen   string `yaml:"listen"`
	StoreDir string `yaml:"store_dir"` // default <data_dir>/nats
	// AllowRemote lets listen be a non-loopback address (anonymous clients
	// elsewhere may then publish sync requests; see README "NATS permissions").
	AllowRemote bool `yaml:"allow_remote"`
}

// Registry is one local registry.
type Registry struct {
	Name       string   `yaml:"name"`
	Default    bool     `yaml:"default"`
	Push       bool     `yaml:"push"`
	Connectors []string `yaml:"connectors"`
	TagTTL     Duration `yaml:"tag_ttl"` // 0 written in the file: always revalidate
	Sync       Sync     `yaml:"sync"`

	// Retention is what the gc job may remove; nil keeps everything.
	Retention *Retention `yaml:"retention"`

	// ttlSet records that the file gave tag_ttl, so that an explicit 0 is
	// kept instead of being replaced by the default.
	ttlSet bool
}

// Sync says what workers warm for a registry.
type Sync struct {
	Platforms []string `yaml:"platforms"` // empty: all
	Referrers *bool    `yaml:"referrers"` // default true
}

// Connector is an upstream registry, or another local registry.
type Connector struct {
	Name         string   `yaml:"name"`
	URL          string   `yaml:"url"`
	Registry     string   `yaml:"registry"`
	Host         string   `yaml:"host"`
	Username     string   `yaml:"username"`
	PasswordEnv  string   `yaml:"password_env"`
	PasswordFile string   `yaml:"password_file"`
	Include      []string `yaml:"include"`
	Exclude      []string `yaml:"exclude"`
	Concurrency  int      `yaml:"concurrency"`
	// AuthHosts are other hosts (host or host:port) that may receive the
	// connector's credentials, such as a token realm on another host.
	AuthHosts []string `yaml:"auth_hosts"`
	// MaxManifestEntries bounds the upstream work one manifest can cause
	// through this connector: index entries followed, layers fetched,
	// referrers listed, references asked about by the dangling scan.
	MaxManifestEntries int `yaml:"max_manifest_entries"`
}

// Worker configures the worker daemon.
type Worker struct {
	Concurrency   int      `yaml:"concurrency"`
	MaxDeliveries int      `yaml:"max_deliveries"`
	AckWait       Duration `yaml:"ack_wait"` // redelivery delay after a worker dies mid-job
}

// Auth enables authentication and access rules.
type Auth struct {
	HtpasswdFile string `yaml:"htpasswd_file"`
	Rules        []Rule `yaml:"rules"`

	Throttle AuthThrottle  `yaml:"throttle"`
	Token    AuthToken     `yaml:"token"`
	External *AuthExternal `yaml:"external"` // tokens from another issuer
}

// AuthThrottle limits failed logins: after MaxFailures failures of one user
// from one client address (or MaxFailuresPerClient failures of any users
// from one address) within Window, logins from there are answered 429
// until the window ends. MaxEntries bounds the memory of the counters.
type AuthThrottle struct {
	MaxFailures          int      `yaml:"max_failures"`
	MaxFailuresPerClient int      `yaml:"max_failures_per_client"`
	Window               Duration `yaml:"window"`
	MaxEntries           int      `yaml:"max_entries"`
}

// AuthToken configures the tokens /auth/token issues (JWTs signed with the
// PEM private key in KeyFile, shared by every serve replica).
type AuthToken struct {
	KeyFile string   `yaml:"key_file"` // default <data_dir>/auth-token.key
	Issuer  string   `yaml:"issuer"`   // default "regwarm"
	Service string   `yaml:"service"`  // default "regwarm"
	TTL     Duration `yaml:"ttl"`      // default 5m
}

// AuthExternal accepts tokens of an external token server: clients are
// sent to Realm, and tokens must be signed by a key of a certificate in
// RootCertBundle, issued by Issuer for Service.
type AuthExternal struct {
	Realm          string `yaml:"realm"`
	Service        string `yaml:"service"`
	Issuer         string `yaml:"issuer"`
	RootCertBundle string `yaml:"rootcert_bundle"`
}

// Rule grants actions on a registry to users; the first match wins.
type Rule struct {
	Registry string   `yaml:"registry"`
	Users    []string `yaml:"users"`
	Allow    []string `yaml:"allow"` // pull | push | delete
}

// Jobs configures the scheduled jobs.
type Jobs struct {
	DanglingScan DanglingScan `yaml:"dangling_scan"`
	Verify       Verify       `yaml:"verify"`
	Refresh      Refresh      `yaml:"refresh"`
	GC           GC           `yaml:"gc"`
}

// GC configures retention and garbage collection (docs/gc.md).
type GC struct {
	Schedule string `yaml:"schedule"` // cron spec; "" disables the scheduled runs
	// Delay protects what was written or used less than this long ago.
	Delay Duration `yaml:"delay"`
	// DryRun lists what would go without deleting it.
	DryRun bool `yaml:"dry_run"`
	// DiskWatermark (an extension): when the store's filesystem has less
	// free space than this, a run starts early and evicts retention-managed
	// images, least recently pulled first, until it would not. 0: off.
	DiskWatermark ByteSize `yaml:"disk_watermark"`
	// CheckEvery (an extension) is how often workers measure each
	// registry against its max_bytes and the disk against the watermark;
	// a registry over budget starts a run early (at most one per 5
	// minutes across the cluster). Default 5m.
	CheckEvery Duration `yaml:"check_every"`

	scheduleSet bool // the file gave schedule; "" then means disabled
	delaySet    bool // the file gave delay; 0 then means none
}

// DanglingScan configures the dangling-reference scan.
type DanglingScan struct {
	Schedule string `yaml:"schedule"` // cron spec; "" disables the job
	Repair   bool   `yaml:"repair"`

	scheduleSet bool // the file gave schedule; "" then means disabled
}

// Verify configures the integrity check.
type Verify struct {
	Schedule          string `yaml:"schedule"` // cron spec; "" disables the job
	MaxBytesPerSecond int64  `yaml:"max_bytes_per_second"`
	// Repair fetches content that manifests reference, absent here but
	// still available upstream (counted remote_only either way).
	Repair bool `yaml:"repair"`

	scheduleSet bool // the file gave schedule; "" then means disabled
}

// Refresh configures tag refresh.
type Refresh struct {
	Schedule string   `yaml:"schedule"` // cron spec; "" disables the job
	Images   []string `yaml:"images"`

	scheduleSet bool // the file gave schedule; "" then means disabled
}

// Duration is a time.Duration written as "5m" or "90s" in YAML.
type Duration time.Duration

var (
	_ yaml.Unmarshaler = (*Duration)(nil)
	_ yaml.Marshaler   = Duration(0)
)

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d like time.Duration does ("5m0s").
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML parses a Go duration string; a number without a unit is an
// error, so that "300" is never silently read as nanoseconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: cannot unmarshal %s into config.Duration", n.Line, n.ShortTag()),
		}}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: invalid duration %q: want a number with a unit, like 90s or 5m", n.Line, n.Value),
		}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as a duration string such as "5m0s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Webhook is an endpoint, POST <serve.listen>/webhooks/<name>, that turns an
// upstream's push notifications into sync jobs.
type Webhook struct {
	Name      string   `yaml:"name"`
	Format    string   `yaml:"format"`     // distribution | harbor | dockerhub | cloudevents
	Connector string   `yaml:"connector"`  // the connector whose repositories the notifications name
	SecretEnv string   `yaml:"secret_env"` // environment variable holding the shared secret
	Actions   []string `yaml:"actions"`    // push | delete; default [push]
}

// Webhook formats and actions.
const (
	WebhookDistribution = "distribution"
	WebhookHarbor       = "harbor"
	WebhookDockerHub    = "dockerhub"
	WebhookCloudEvents  = "cloudevents"
	WebhookPush         = "push"
	WebhookDelete       = "delete"
)

// WebhookFormats lists the accepted webhook formats.
var WebhookFormats = []string{WebhookDistribution, WebhookHarbor, WebhookDockerHub, WebhookCloudEvents}

// Secret returns the webhook's shared secret from its environment variable.
func (w *Webhook) Secret() string {
	if w.SecretEnv == "" {
		return ""
	}
	return os.Getenv(w.SecretEnv)
}

// Wants reports whether the webhook acts on action (push or delete).
func (w *Webhook) Wants(action string) bool { return slices.Contains(w.Actions, action) }
