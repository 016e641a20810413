package config

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/ref"
)

// Accepted enumerations.
var (
	logLevels   = []string{"debug", "info", "warn", "error"}
	logFormats  = []string{"text", "json"}
	ruleActions = []string{"pull", "push", "delete"}
	natsSchemes = []string{"nats", "tls", "ws", "wss"}
)

// reservedRegistries are names that would clash with API paths below /v2/.
var reservedRegistries = []string{"v2"}

// Validate checks c, normally after ApplyDefaults, and returns every
// problem found joined with errors.Join. Each problem is a *FieldError that
// names the field path and the offending value, for example
//
//	registries[1].name: "Hub": must match [a-z0-9][a-z0-9_-]*
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.general()
	v.nats()
	v.registries()
	v.connectors()
	v.cycles()
	v.worker()
	v.auth()
	v.serveLimits()
	v.authExtra()
	v.jobs()
	v.webhooks()
	return errors.Join(v.errs...)
}

// validator collects problems.
type validator struct {
	c    *Config
	errs []error
}

// add records a problem at path; value is shown quoted when it is a
// string and omitted when nil.
func (v *validator) add(path string, value any, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{
		Path:  path,
		Value: show(value),
		Msg:   fmt.Sprintf(format, args...),
		Kind:  ErrInvalid,
	})
}

func show(value any) string {
	switch x := value.(type) {
	case nil:
		return ""
	case string:
		return strconv.Quote(x)
	default:
		return fmt.Sprint(x)
	}
}

func (v *validator) general() {
	c := v.c
	if c.Version != 1 {
		v.add("version", c.Version, "must be 1")
	}
	if c.DataDir == "" {
		v.add("data_dir", nil, "required")
	}
	if !slices.Contains(logLevels, c.Log.Level) {
		v.add("log.level", c.Log.Level, "must be one of %s", strings.Join(logLevels, ", "))
	}
	if !slices.Contains(logFormats, c.Log.Format) {
		v.add("log.format", c.Log.Format, "must be one of %s", strings.Join(logFormats, ", "))
	}
	v.listen("serve.listen", c.Serve.Listen)
	v.listen("metrics.listen", c.Metrics.Listen)
	if c.Serve.Listen == c.Metrics.Listen && !strings.HasSuffix(c.Serve.Listen, ":0") {
		v.add("metrics.listen", c.Metrics.Listen, "same address as serve.listen")
	}
	switch tls := c.Serve.TLS; {
	case tls.CertFile != "" && tls.KeyFile == "":
		v.add("serve.tls.key_file", nil, "required when cert_file is set")
	case tls.CertFile == "" && tls.KeyFile != "":
		v.add("serve.tls.cert_file", nil, "required when key_file is set")
	}
	v.storage()
	if c.Serve.UploadExpiry < 0 {
		v.add("serve.upload_expiry", c.Serve.UploadExpiry, "must be positive")
	}
	if c.Serve.MaxUploads < 0 {
		v.add("serve.max_uploads", c.Serve.MaxUploads, "must be positive")
	}
}

// bucketRE is an S3 bucket name.
var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// envRE is an environment variable name.
var envRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// storage checks the one configured store backend.
func (v *validator) storage() {
	st := v.c.Storage
	if st.S3 == nil {
		if st.Filesystem.Root == "" {
			v.add("storage.filesystem.root", nil, "required")
		}
		return
	}
	if st.Filesystem.Root != "" || st.Filesystem.GroupReadable {
		v.add("storage", nil, "set exactly one of filesystem and s3")
	}
	s := st.S3
	if s.Bucket == "" {
		v.add("storage.s3.bucket", nil, "required")
	} else if !bucketRE.MatchString(s.Bucket) || strings.Contains(s.Bucket, "..") {
		v.add("storage.s3.bucket", s.Bucket, "must be 3-63 characters of a-z, 0-9, '.' and '-'")
	}
	if s.Endpoint != "" {
		u, err := url.Parse(s.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
			v.add("storage.s3.endpoint", s.Endpoint, "must be http(s)://host[:port]")
		}
	}
	if p := strings.Trim(s.Prefix, "/"); strings.Contains(p, "//") || slices.Contains(strings.Split(p, "/"), "..") ||
		strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
		v.add("storage.s3.prefix", s.Prefix, "must be a path of non-empty segments without '..'")
	}
	if ttl := s.MetadataTTLOrDefault(); ttl < 0 || ttl > time.Minute {
		v.add("storage.s3.metadata_ttl", s.MetadataTTL.D(), "must be between 0s and 1m")
	}
	if (s.AccessKeyIDEnv == "") != (s.SecretAccessKeyEnv == "") {
		v.add("storage.s3.secret_access_key_env", s.SecretAccessKeyEnv, "set both access_key_id_env and secret_access_key_env, or neither (AWS default chain)")
	}
	for _, f := range []struct{ path, name string }{
		{"storage.s3.access_key_id_env", s.AccessKeyIDEnv}, {"storage.s3.secret_access_key_env", s.SecretAccessKeyEnv},
	} {
		if f.name != "" && !envRE.MatchString(f.name) {
			v.add(f.path, f.name, "must be an environment variable name")
		}
	}
}

// listen checks a host:port listen address; the host may be empty.
func (v *validator) listen(path, addr string) {
	if msg := checkListen(addr); msg != "" {
		v.add(path, addr, "%s", msg)
	}
}

func (v *validator) nats() {
	n := v.c.NATS
	if n.URL != "" {
		for i, u := range strings.Split(n.URL, ",") {
			if msg := checkNATSURL(strings.TrimSpace(u)); msg != "" {
				v.add(fmt.Sprintf("nats.url[%d]", i), redactURL(strings.TrimSpace(u)), "%s", msg)
			}
		}
	}
	v.listen("nats.embedded.listen", n.Embedded.Listen)
	if n.URL == "" && !n.Embedded.AllowRemote && !loopbackListen(n.Embedded.Listen) {
		v.add("nats.embedded.listen", n.Embedded.Listen,
			"is not a loopback address: set nats.embedded.allow_remote: true to let other hosts connect")
	}
	if n.Embedded.StoreDir == "" {
		v.add("nats.embedded.store_dir", nil, "required")
	}
	if msg := checkSubjectPrefix(n.SubjectPrefix); msg != "" {
		v.add("nats.subject_prefix", n.SubjectPrefix, "%s", msg)
	}
	if n.PasswordEnv != "" && n.Username == "" {
		v.add("nats.password_env", n.PasswordEnv, "needs nats.username")
	}
	if (n.TLS.CertFile == "") != (n.TLS.KeyFile == "") {
		v.add("nats.tls", nil, "cert_file and key_file go together")
	}
	if n.Replicas < 1 || n.Replicas > 5 {
		v.add("nats.replicas", n.Replicas, "must be between 1 and 5")
	}
}

func (v *validator) registries() {
	c := v.c
	if c.Registries != nil && len(c.Registries) == 0 {
		v.add("registries", nil, "at least one registry is required (leave the key out for the default one)")
	}
	names := map[string]int{}
	def := -1
	for i, r := range c.Registries {
		p := fmt.Sprintf("registries[%d]", i)
		switch {
		case len(r.Name) > 64:
			v.add(p+".name", r.Name, "must be at most 64 characters")
		case ref.ValidRegistry(r.Name) != nil:
			v.add(p+".name", r.Name, "must match [a-z0-9][a-z0-9_-]*")
		case slices.Contains(reservedRegistries, r.Name):
			v.add(p+".name", r.Name, "reserved: clashes with a /v2/ API path")
		}
		if j, dup := names[r.Name]; dup {
			v.add(p+".name", r.Name, "duplicate: registries[%d] has the same name", j)
		} else {
			names[r.Name] = i
		}
		if r.Default {
			if def >= 0 {
				v.add(p+".default", true, "only one registry may be the default; registries[%d] (%q) already is", def, c.Registries[def].Name)
			} else {
				def = i
			}
		}
		if !r.Push && len(r.Connectors) == 0 {
			v.add(p, nil, "needs push: true or at least one connector")
		}
		seen := map[string]int{}
		for j, name := range r.Connectors {
			cp := fmt.Sprintf("%s.connectors[%d]", p, j)
			if _, ok := c.Connector(name); !ok {
				v.add(cp, name, "no connector has this name")
			}
			if k, dup := seen[name]; dup {
				v.add(cp, name, "listed twice (also connectors[%d])", k)
			} else {
				seen[name] = j
			}
		}
		if r.TagTTL < 0 {
			v.add(p+".tag_ttl", r.TagTTL.String(), "must not be negative")
		}
		v.retention(p+".retention", r.Retention)
		for j, pl := range r.Sync.Platforms {
			if !platformRE.MatchString(pl) {
				v.add(fmt.Sprintf("%s.sync.platforms[%d]", p, j), pl, "must be os/arch or os/arch/variant, lower case (like linux/arm64 or linux/arm/v7)")
			}
		}
	}
	v.shadowedLibrary(names, def)
}

// shadowedLibrary reports a registry named "library" when the default
// registry mirrors Docker Hub: "/v2/library/alpine/..." would then reach
// that registry instead of Docker Hub's official images.
func (v *validator) shadowedLibrary(names map[string]int, def int) {
	i, ok := names["library"]
	if !ok || def < 0 {
		return
	}
	for _, name := range v.c.Registries[def].Connectors {
		if cn, ok := v.c.Connector(name); ok && cn.Host != "" && ref.IsDockerHub(cn.Host) {
			v.add(fmt.Sprintf("registries[%d].name", i), "library", "shadows Docker Hub's official images on the default registry %q", v.c.Registries[def].Name)
			return
		}
	}
}

func (v *validator) connectors() {
	c := v.c
	names := map[string]int{}
	hosts := map[string]int{}
	for i, cn := range c.Connectors {
		p := fmt.Sprintf("connectors[%d]", i)
		v.listName("connectors", i, cn.Name, names)
		switch {
		case cn.URL != "" && cn.Registry != "":
			v.add(p, nil, "set url or registry, not both")
		case cn.URL == "" && cn.Registry == "":
			v.add(p, nil, "needs url (an upstream) or registry (a local registry)")
		case cn.URL != "":
			if msg := checkUpstreamURL(cn.URL); msg != "" {
				v.add(p+".url", redactURL(cn.URL), "%s", msg)
			}
		default:
			if _, ok := c.Registry(cn.Registry); !ok {
				v.add(p+".registry", cn.Registry, "no registry has this name")
			}
			for _, f := range [...]struct{ key, val string }{
				{"username", cn.Username}, {"password_env", cn.PasswordEnv}, {"password_file", cn.PasswordFile},
			} {
				if f.val != "" {
					v.add(p+"."+f.key, nil, "only applies to url connectors")
				}
			}
		}
		if cn.Host != "" {
			if msg := checkHost(cn.Host); msg != "" {
				v.add(p+".host", cn.Host, "%s", msg)
			} else if j, dup := hosts[CanonicalHost(cn.Host)]; dup {
				v.add(p+".host", cn.Host, "same host as connectors[%d] (%q)", j, c.Connectors[j].Name)
			} else {
				hosts[CanonicalHost(cn.Host)] = i
			}
		}
		if cn.PasswordEnv != "" && cn.PasswordFile != "" {
			v.add(p+".password_file", cn.PasswordFile, "set password_env or password_file, not both")
		}
		if (cn.PasswordEnv != "" || cn.PasswordFile != "") && cn.Username == "" && cn.URL != "" {
			v.add(p+".username", nil, "required when a password is set")
		}
		v.globs(p+".include", cn.Include)
		v.globs(p+".exclude", cn.Exclude)
		for j, h := range cn.AuthHosts {
			if msg := checkHost(h); msg != "" {
				v.add(fmt.Sprintf("%s.auth_hosts[%d]", p, j), h, "%s", msg)
			} else if cn.URL == "" {
				v.add(fmt.Sprintf("%s.auth_hosts[%d]", p, j), h, "only applies to url connectors")
			}
		}
		if cn.Concurrency < 1 {
			v.add(p+".concurrency", cn.Concurrency, "must be at least 1")
		}
		if cn.MaxManifestEntries < 1 || cn.MaxManifestEntries > manifest.MaxReferences {
			v.add(p+".max_manifest_entries", cn.MaxManifestEntries, "must be from 1 to %d", manifest.MaxReferences)
		}
	}
}

func (v *validator) globs(p string, patterns []string) {
	for i, g := range patterns {
		if g == "" {
			v.add(fmt.Sprintf("%s[%d]", p, i), g, "empty pattern")
		} else if _, err := path.Match(g, "x"); err != nil {
			v.add(fmt.Sprintf("%s[%d]", p, i), g, "not a valid glob (path.Match syntax)")
		}
	}
}

// cycles reports connector chains through local registries that lead back
// to where they started, such as release -> prerelease -> release.
func (v *validator) cycles() {
	regs := v.c.Registries
	index := map[string]int{}
	for i, r := range regs {
		if _, dup := index[r.Name]; !dup {
			index[r.Name] = i
		}
	}
	const (
		unvisited = iota
		onStack
		done
	)
	state := make([]int, len(regs))
	var stack []int
	var visit func(i int)
	visit = func(i int) {
		state[i] = onStack
		stack = append(stack, i)
		for j, name := range regs[i].Connectors {
			cn, ok := v.c.Connector(name)
			if !ok || cn.Registry == "" {
				continue
			}
			k, ok := index[cn.Registry]
			if !ok {
				continue
			}
			switch state[k] {
			case unvisited:
				visit(k)
			case onStack:
				from := slices.Index(stack, k)
				chain := make([]string, 0, len(stack)-from+1)
				for _, s := range stack[from:] {
					chain = append(chain, regs[s].Name)
				}
				chain = append(chain, regs[k].Name)
				v.add(fmt.Sprintf("registries[%d].connectors[%d]", i, j), name,
					"connector chain forms a cycle: %s", strings.Join(chain, " -> "))
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
	}
	for i := range regs {
		if state[i] == unvisited {
			visit(i)
		}
	}
}

func (v *validator) worker() {
	w := v.c.Worker
	if w.Concurrency < 1 {
		v.add("worker.concurrency", w.Concurrency, "must be at least 1")
	}
	if w.AckWait.D() < 3*time.Second || w.AckWait.D() > time.Hour {
		v.add("worker.ack_wait", w.AckWait.String(), "must be between 3s and 1h")
	}
	if w.MaxDeliveries < 1 {
		v.add("worker.max_deliveries", w.MaxDeliveries, "must be at least 1")
	}
}

func (v *validator) auth() {
	a := v.c.Auth
	if a == nil {
		return
	}
	if a.HtpasswdFile == "" {
		v.add("auth.htpasswd_file", nil, "required when auth is present")
	}
	for i, r := range a.Rules {
		p := fmt.Sprintf("auth.rules[%d]", i)
		if _, ok := v.c.Registry(r.Registry); !ok && r.Registry != "*" {
			v.add(p+".registry", r.Registry, "no registry has this name (use \"*\" for all)")
		}
		if len(r.Users) == 0 {
			v.add(p+".users", nil, "at least one user is required")
		}
		for j, u := range r.Users {
			if strings.TrimSpace(u) == "" {
				v.add(fmt.Sprintf("%s.users[%d]", p, j), u, "empty user name")
			}
		}
		for j, act := range r.Allow {
			if !slices.Contains(ruleActions, act) {
				v.add(fmt.Sprintf("%s.allow[%d]", p, j), act, "must be one of %s", strings.Join(ruleActions, ", "))
			}
		}
	}
}

func (v *validator) jobs() {
	j := v.c.Jobs
	v.schedule("jobs.dangling_scan.schedule", j.DanglingScan.Schedule)
	v.schedule("jobs.verify.schedule", j.Verify.Schedule)
	v.schedule("jobs.refresh.schedule", j.Refresh.Schedule)
	v.schedule("jobs.gc.schedule", j.GC.Schedule)
	if j.GC.Delay < 0 {
		v.add("jobs.gc.delay", j.GC.Delay.String(), "must not be negative (0: no delay)")
	}
	if j.GC.CheckEvery < Duration(time.Second) {
		v.add("jobs.gc.check_every", j.GC.CheckEvery.String(), "must be at least 1s")
	}
	if j.GC.DiskWatermark < 0 {
		v.add("jobs.gc.disk_watermark", int64(j.GC.DiskWatermark), "must not be negative (0: off)")
	}
	if j.Verify.MaxBytesPerSecond < 0 {
		v.add("jobs.verify.max_bytes_per_second", j.Verify.MaxBytesPerSecond, "must not be negative (0: no limit)")
	}
	for i, img := range j.Refresh.Images {
		p := fmt.Sprintf("jobs.refresh.images[%d]", i)
		reg, _, _, msg := ParseRefreshImage(img)
		if msg != "" {
			v.add(p, img, "%s", msg)
			continue
		}
		if _, ok := v.c.Registry(reg); !ok {
			v.add(p, img, "no registry named %q", reg)
		}
	}
}

// schedule checks a cron spec; "" (disabled) is valid.
func (v *validator) schedule(p, spec string) {
	if spec == "" {
		return
	}
	if err := parseSchedule(spec); err != nil {
		v.add(p, spec, "%v", err)
	}
}

// parseSchedule parses spec as regwarm's workers will (ParseSchedule).
func parseSchedule(spec string) error {
	_, _, err := ParseSchedule(spec)
	return err
}

// webhooks checks the webhook endpoints: a known format, an existing
// connector, and a secret that is set (a webhook is never open).
func (v *validator) webhooks() {
	names := map[string]int{}
	for i, w := range v.c.Webhooks {
		p := fmt.Sprintf("webhooks[%d]", i)
		v.listName("webhooks", i, w.Name, names)
		if !slices.Contains(WebhookFormats, w.Format) {
			v.add(p+".format", w.Format, "must be one of %s", strings.Join(WebhookFormats, ", "))
		}
		if _, ok := v.c.Connector(w.Connector); !ok {
			v.add(p+".connector", w.Connector, "no connector has this name")
		}
		if w.SecretEnv == "" { // whether it is set is CheckSecrets' concern
			v.add(p+".secret_env", nil, "required: the environment variable holding the shared secret")
		}
		if len(w.Actions) == 0 {
			v.add(p+".actions", nil, "at least one of %s, %s", WebhookPush, WebhookDelete)
		}
		for j, a := range w.Actions {
			if a != WebhookPush && a != WebhookDelete {
				v.add(fmt.Sprintf("%s.actions[%d]", p, j), a, "must be one of %s, %s", WebhookPush, WebhookDelete)
			}
		}
	}
}

// listName checks the name of entry i of list: a valid, unique name.
func (v *validator) listName(list string, i int, name string, seen map[string]int) {
	p := fmt.Sprintf("%s[%d].name", list, i)
	if len(name) > 64 || ref.ValidRegistry(name) != nil {
		v.add(p, name, "must match [a-z0-9][a-z0-9_-]* (at most 64 characters)")
	}
	if j, dup := seen[name]; dup {
		v.add(p, name, "duplicate: %s[%d] has the same name", list, j)
	} else {
		seen[name] = i
	}
}
