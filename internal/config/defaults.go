package config

import (
	"path/filepath"
	"time"
)

// The defaults, in one place. ApplyDefaults is the only code that uses them.
const (
	defaultVersion          = 1
	defaultDataDir          = "./regwarm-data"
	defaultLogLevel         = "info"
	defaultLogFormat        = "text"
	defaultServeListen      = "127.0.0.1:5000"
	defaultMetricsListen    = "127.0.0.1:9466"
	defaultNATSListen       = "127.0.0.1:4222"
	defaultSubjectPrefix    = "regwarm"
	defaultTagTTL           = 5 * time.Minute
	defaultConcurrency      = 4
	defaultWorkers          = 4
	defaultMaxDeliveries    = 5
	defaultDanglingSchedule = "0 3 * * *"
	defaultVerifySchedule   = "@weekly"
	defaultRefreshSchedule  = "*/30 * * * *"
	defaultGCSchedule       = "0 4 * * *"
	defaultGCDelay          = Duration(time.Hour)
	defaultRegistry         = "local"
	defaultUploadExpiry     = 24 * time.Hour
	defaultS3Region         = "us-east-1"
	defaultMaxUploads       = 100
	// DefaultMaxManifestEntries is connectors[].max_manifest_entries when unset.
	DefaultMaxManifestEntries = 1000
)

// Default returns the configuration of a file that sets nothing: one
// registry "local" that is the default and accepts pushes, the embedded
// NATS server, and every other default applied.
func Default() *Config {
	c := &Config{}
	c.ApplyDefaults()
	return c
}

// ApplyDefaults fills every unset field with its default. Empty strings and
// zero numbers count as unset, with two exceptions kept from the file: a
// tag_ttl of 0 (always revalidate) and a schedule of "" (job disabled).
// Paths below data_dir are derived from it. When registries is absent (nil,
// not an empty list) it becomes one registry {name: local, default: true,
// push: true}, so that a minimal file gives a usable cache.
func (c *Config) ApplyDefaults() {
	setInt(&c.Version, defaultVersion)
	setString(&c.DataDir, defaultDataDir)
	setString(&c.Log.Level, defaultLogLevel)
	setString(&c.Log.Format, defaultLogFormat)
	setString(&c.Serve.Listen, defaultServeListen)
	setString(&c.Metrics.Listen, defaultMetricsListen)
	if c.Serve.UploadExpiry == 0 {
		c.Serve.UploadExpiry = Duration(defaultUploadExpiry)
	}
	setInt(&c.Serve.MaxUploads, defaultMaxUploads)
	if c.Storage.S3 == nil {
		setString(&c.Storage.Filesystem.Root, storeRoot(c.DataDir))
	} else {
		setString(&c.Storage.S3.Region, defaultS3Region)
		if c.Storage.S3.MetadataTTL == nil {
			ttl := Duration(DefaultS3MetadataTTL)
			c.Storage.S3.MetadataTTL = &ttl
		}
	}
	setString(&c.NATS.Embedded.Listen, defaultNATSListen)
	setString(&c.NATS.Embedded.StoreDir, natsStoreDir(c.DataDir))
	setString(&c.NATS.SubjectPrefix, defaultSubjectPrefix)
	setInt(&c.NATS.Replicas, 1)

	if c.Registries == nil {
		c.Registries = []Registry{{Name: defaultRegistry, Default: true, Push: true}}
	}
	for i := range c.Registries {
		r := &c.Registries[i]
		if r.TagTTL == 0 && !r.ttlSet {
			r.TagTTL = Duration(defaultTagTTL)
		}
		if r.Sync.Referrers == nil {
			on := true
			r.Sync.Referrers = &on
		}
	}
	for i := range c.Connectors {
		setInt(&c.Connectors[i].Concurrency, defaultConcurrency)
		setInt(&c.Connectors[i].MaxManifestEntries, DefaultMaxManifestEntries)
	}
	setInt(&c.Worker.Concurrency, defaultWorkers)
	setInt(&c.Worker.MaxDeliveries, defaultMaxDeliveries)
	c.Serve.applyDefaults()
	if c.Auth != nil {
		c.Auth.applyDefaults(c.DataDir)
	}
	if c.Worker.AckWait == 0 {
		c.Worker.AckWait = Duration(30 * time.Second)
	}

	for i := range c.Webhooks {
		if c.Webhooks[i].Actions == nil {
			c.Webhooks[i].Actions = []string{WebhookPush}
		}
	}

	if !c.Jobs.DanglingScan.scheduleSet {
		setString(&c.Jobs.DanglingScan.Schedule, defaultDanglingSchedule)
	}
	if !c.Jobs.Verify.scheduleSet {
		setString(&c.Jobs.Verify.Schedule, defaultVerifySchedule)
	}
	if !c.Jobs.Refresh.scheduleSet {
		setString(&c.Jobs.Refresh.Schedule, defaultRefreshSchedule)
	}
	if !c.Jobs.GC.scheduleSet {
		setString(&c.Jobs.GC.Schedule, defaultGCSchedule)
	}
	if !c.Jobs.GC.delaySet && c.Jobs.GC.Delay == 0 {
		c.Jobs.GC.Delay = defaultGCDelay
	}
	if c.Jobs.GC.CheckEvery == 0 {
		c.Jobs.GC.CheckEvery = Duration(5 * time.Minute)
	}
}

// storeRoot is the default storage root below dataDir.
func storeRoot(dataDir string) string { return filepath.Join(dataDir, "store") }

// natsStoreDir is the default embedded NATS store below dataDir.
func natsStoreDir(dataDir string) string { return filepath.Join(dataDir, "nats") }

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

// Overrides are command-line values that replace config values for one
// process (--listen, --metrics-listen, --data-dir, --nats-url,
// --log-level); empty fields change nothing.
type Overrides struct {
	Listen        string // serve.listen
	MetricsListen string // metrics.listen
	DataDir       string // data_dir, and the paths that were derived from it
	NATSURL       string // nats.url
	LogLevel      string // log.level
}

// Override applies o to c and validates the result again. A new data_dir
// also moves the storage root and NATS store dir when they were the
// defaults derived from the old data_dir; paths set explicitly stay.
func (c *Config) Override(o Overrides) error {
	if o.DataDir != "" && o.DataDir != c.DataDir {
		if c.Storage.Filesystem.Root == storeRoot(c.DataDir) {
			c.Storage.Filesystem.Root = ""
		}
		if c.NATS.Embedded.StoreDir == natsStoreDir(c.DataDir) {
			c.NATS.Embedded.StoreDir = ""
		}
		if c.Auth != nil && c.Auth.Token.KeyFile == tokenKeyFile(c.DataDir) {
			c.Auth.Token.KeyFile = ""
		}
		c.DataDir = o.DataDir
	}
	if o.Listen != "" {
		c.Serve.Listen = o.Listen
	}
	if o.MetricsListen != "" {
		c.Metrics.Listen = o.MetricsListen
	}
	if o.NATSURL != "" {
		c.NATS.URL = o.NATSURL
	}
	if o.LogLevel != "" {
		c.Log.Level = o.LogLevel
	}
	c.ApplyDefaults()
	return c.Validate()
}

// Defaults of the API listener's limits and of auth.
const (
	defaultMaxConnections          = 4096
	defaultMaxConnectionsPerClient = 256
	defaultHeaderTimeout           = 10 * time.Second
	defaultBodyIdleTimeout         = 30 * time.Second
	defaultThrottleFailures        = 5
	defaultThrottleClientFailures  = 20
	defaultThrottleWindow          = time.Minute
	defaultThrottleEntries         = 10000
	defaultTokenIssuer             = "regwarm"
	defaultTokenService            = "regwarm"
	defaultTokenTTL                = 5 * time.Minute
)

func (s *Serve) applyDefaults() {
	setInt(&s.MaxConnections, defaultMaxConnections)
	setInt(&s.MaxConnectionsPerClient, defaultMaxConnectionsPerClient)
	setDuration(&s.HeaderTimeout, defaultHeaderTimeout)
	setDuration(&s.BodyIdleTimeout, defaultBodyIdleTimeout)
}

func (a *Auth) applyDefaults(dataDir string) {
	setInt(&a.Throttle.MaxFailures, defaultThrottleFailures)
	setInt(&a.Throttle.MaxFailuresPerClient, defaultThrottleClientFailures)
	setDuration(&a.Throttle.Window, defaultThrottleWindow)
	setInt(&a.Throttle.MaxEntries, defaultThrottleEntries)
	setString(&a.Token.KeyFile, tokenKeyFile(dataDir))
	setString(&a.Token.Issuer, defaultTokenIssuer)
	setString(&a.Token.Service, defaultTokenService)
	setDuration(&a.Token.TTL, defaultTokenTTL)
}

// tokenKeyFile is the default token signing key below dataDir.
func tokenKeyFile(dataDir string) string { return filepath.Join(dataDir, "auth-token.key") }

func setDuration(p *Duration, v time.Duration) {
	if *p == 0 {
		*p = Duration(v)
	}
}
