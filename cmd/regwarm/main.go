// Command regwarm is a container registry that caches other registries.
// It parses flags, loads the config, wires the process and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/jobs"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `usage: regwarm <command> [flags]

commands:
  run           embedded NATS + registry API + worker in one process
  serve         the registry API only
  worker        the worker daemon: sync jobs from NATS
  sync IMAGE…   force-sync images through a running deployment and wait for each result
  scan          one-shot dangling-reference scan of the store (exit 1 on problems)
  verify        one-shot integrity check of stored content (exit 1 on problems)
  gc            one-shot retention + garbage collection (--dry-run: list only)
  usage         bytes per registry and repository, tags, last pulled
  migrate       copy a filesystem store into the configured (S3) store
  config check  validate and print the effective config, listing every problem
  version       print version and build info

Every command works without --config, with the defaults of "regwarm run":
registry API 127.0.0.1:5000, metrics 127.0.0.1:9466, embedded NATS
127.0.0.1:4222, data in ./regwarm-data.

run "regwarm <command> -h" for a command's flags
`

func main() {
	daemon.Version = version
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runDaemon(daemon.ModeRun, args[1:], stdout, stderr)
	case "serve":
		return runDaemon(daemon.ModeServe, args[1:], stdout, stderr)
	case "worker":
		return runDaemon(daemon.ModeWorker, args[1:], stdout, stderr)
	case "sync":
		return syncCmd(args[1:], stdout, stderr)
	case "scan":
		return oneShot("scan", jobs.JobDanglingScan, args[1:], stdout, stderr)
	case "verify":
		return oneShot("verify", jobs.JobVerify, args[1:], stdout, stderr)
	case "gc":
		return oneShot("gc", jobs.JobGC, args[1:], stdout, stderr)
	case "usage":
		return usageCmd(args[1:], stdout, stderr)
	case "migrate":
		return migrateCmd(args[1:], stdout, stderr)
	case "config":
		if len(args) >= 2 && isHelp(args[1]) {
			fmt.Fprint(stdout, "usage: regwarm config check [flags]\n\nrun \"regwarm config check -h\" for its flags\n")
			return 0
		}
		if len(args) < 2 || args[1] != "check" {
			fmt.Fprint(stderr, "usage: regwarm config check [--config FILE] [--probe]\n")
			return 2
		}
		return configCheck(args[2:], stdout, stderr)
	case "version", "--version", "-version":
		return versionCmd(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "regwarm: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "regwarm version", "print the version and build information")
	if _, code, ok := parseFlags(fs, args, false, stdout, stderr); !ok {
		return code
	}
	printVersion(stdout)
	return 0
}

func runDaemon(mode daemon.Mode, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(string(mode), "regwarm "+string(mode)+" [flags]", daemonHelp[mode])
	cfgPath := configFlag(fs)
	var o config.Overrides
	registerOverrides(fs, &o, daemonOverrides[mode]...)
	registerIgnored(fs)
	if _, code, ok := parseFlags(fs, args, false, stdout, stderr); !ok {
		return code
	}
	cfg, err := loadConfig(*cfgPath, o)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm: invalid config:\n%v\n", err)
		return 2
	}
	if err := cfg.CheckSecrets(); err != nil {
		fmt.Fprintf(stderr, "regwarm: the config names credentials this environment does not provide:\n")
		for _, e := range config.Problems(err) {
			fmt.Fprintf(stderr, "  - %v\n", e)
		}
		return 2
	}
	log := daemon.NewLogger(cfg.Log, stderr)
	for _, w := range cfg.Warnings() {
		log.Warn("config warning", "warning", w)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg, mode, log); err != nil {
		log.Error("regwarm stopped", "error", err)
		return 1
	}
	return 0
}

func syncCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("sync", "regwarm sync [flags] IMAGE…  (flags may also follow the images)",
		"force-sync images through a running deployment and wait for each result.\n"+
			"IMAGE is <registry>/<repo>:<tag>, <registry>/<repo>@<digest>, a name of the default\n"+
			"registry like a pull uses (app:v1, library/alpine:3), or <host>/<repo>:<tag> of a\n"+
			"connector's host. Exit 0 all synced, 1 any failed or invalid, 2 usage/connection error.")
	cfgPath := configFlag(fs)
	natsURL := fs.String("nats-url", "", "NATS server (default: nats.url, else the embedded server's address)")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long to wait for all the results; jobs still running then stay queued (exit 1)")
	images, code, ok := parseFlags(fs, args, true, stdout, stderr)
	if !ok {
		return code
	}
	if len(images) == 0 {
		fmt.Fprint(stderr, "usage: regwarm sync [--config F] [--nats-url U] [--timeout D] IMAGE…\n")
		return exitError
	}
	cfg, err := loadConfig(*cfgPath, config.Overrides{})
	if err != nil {
		fmt.Fprintf(stderr, "regwarm: invalid config:\n%v\n", err)
		return exitError
	}
	good, bad := syncArgs(cfg, images)
	for _, b := range bad {
		fmt.Fprintf(stdout, "error   %s: %v\n", b.image, b.err)
	}
	if len(good) == 0 {
		return exitProblems
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code = syncImages(ctx, cfg, daemon.NATSURL(cfg, *natsURL), good, *timeout, stdout)
	if len(bad) > 0 {
		code = max(code, exitProblems)
	}
	return code
}

// oneShot runs job once as the command name.
func oneShot(name, job string, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(name, "regwarm "+name+" [flags]", oneShotHelp[name])
	cfgPath := configFlag(fs)
	format := fs.String("format", "text", "report format: text or json")
	output := fs.String("output", "", "write the report to this file (default stdout)")
	var repair *bool
	if job == jobs.JobVerify {
		repair = fs.Bool("repair", false, "fetch content that is absent here but still available upstream (default: jobs.verify.repair)")
	}
	var dryRun *bool
	if job == jobs.JobGC {
		dryRun = fs.Bool("dry-run", false, "list what would be removed without removing it (default: jobs.gc.dry_run)")
	}
	var o config.Overrides
	registerOverrides(fs, &o, "data-dir", "log-level")
	registerIgnored(fs)
	cfg, code, ok := parseAndLoad(fs, args, cfgPath, &o, stdout, stderr)
	if !ok {
		return code
	}
	if repair != nil && flagSet(fs, "repair") {
		cfg.Jobs.Verify.Repair = *repair
	}
	if dryRun != nil && flagSet(fs, "dry-run") {
		cfg.Jobs.GC.DryRun = *dryRun
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runJobOnce(ctx, cfg, job, *format, *output, stdout, stderr, daemon.NewLogger(cfg.Log, stderr))
}

func configCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("config check", "regwarm config check [flags]",
		"validate the config (the defaults of \"regwarm run\" without --config), list every\n"+
			"problem and print the effective config. Credentials the config names\n"+
			"(password_env, password_file) are checked in this environment: run, serve and\n"+
			"worker refuse to start without them. Exit 0 valid, 2 invalid.")
	cfgPath := configFlag(fs)
	probe := fs.Bool("probe", false, "also contact each connector's /v2/ and report whether it answers as a registry")
	var o config.Overrides
	registerOverrides(fs, &o)
	if _, code, ok := parseFlags(fs, args, false, stdout, stderr); !ok {
		return code
	}
	name := *cfgPath
	if name == "" {
		name = "(defaults, no --config)"
	}
	cfg, problems := inspectConfig(*cfgPath, o)
	var secrets error
	if cfg != nil {
		secrets = cfg.CheckSecrets()
	}
	if problems != nil || secrets != nil {
		fmt.Fprintf(stderr, "%s: invalid\n", name)
		for _, e := range config.Problems(problems) {
			fmt.Fprintf(stderr, "  - %v\n", e)
		}
		for _, e := range config.Problems(secrets) {
			fmt.Fprintf(stderr, "  - [environment] %v (run, serve and worker refuse to start)\n", e)
		}
		return 2
	}
	b, err := cfg.Redacted().YAML()
	if err != nil {
		fmt.Fprintf(stderr, "regwarm config check: %v\n", err)
		return 2
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if *probe {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if !probeConnectors(ctx, cfg, stdout) {
			fmt.Fprintf(stderr, "%s: a connector does not answer as a registry (see the probe above)\n", name)
			return 2
		}
	}
	fmt.Fprintf(stdout, "# %s: valid; effective config:\n%s", name, b)
	return 0
}

// inspectConfig loads path (or the defaults when path is "") with
// overrides, like loadConfig, but with problems it still returns the config
// as far as it decoded, so that its credentials can be checked too.
func inspectConfig(path string, o config.Overrides) (*config.Config, error) {
	if path == "" {
		return loadConfig("", o)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := config.Inspect(data)
	if err != nil {
		return cfg, err
	}
	if err := cfg.Override(o); err != nil {
		return nil, err
	}
	return cfg, nil
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "regwarm %s\n", version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Fprintf(w, "go %s\n", bi.GoVersion)
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision", "vcs.time", "vcs.modified", "GOOS", "GOARCH":
				fmt.Fprintf(w, "%s %s\n", s.Key, s.Value)
			}
		}
	}
}

func usageCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("usage", "regwarm usage [flags]",
		"bytes per registry and repository (distinct blobs and manifests, shared content once per\n"+
			"registry), tag counts and when a client last pulled. Exit 0, 2 error.")
	cfgPath := configFlag(fs)
	registry := fs.String("registry", "", "only this registry (default: all)")
	format := fs.String("format", "text", "output format: text or json")
	var o config.Overrides
	registerOverrides(fs, &o, "data-dir", "log-level")
	registerIgnored(fs)
	cfg, code, ok := parseAndLoad(fs, args, cfgPath, &o, stdout, stderr)
	if !ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return printUsage(ctx, cfg, *registry, *format, stdout, stderr)
}

func migrateCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("migrate", "regwarm migrate --from DIR [flags]",
		"copy a filesystem store (DIR, e.g. <old data_dir>/store) into the configured store (storage.s3):\n"+
			"blobs, manifests, tags, referrers and last pulls, verified as every write. Content already\n"+
			"there is skipped, so run it once live and once more with serve stopped. Exit 0, 2 error.")
	cfgPath := configFlag(fs)
	from := fs.String("from", "", "root of the filesystem store to copy (required)")
	var o config.Overrides
	registerOverrides(fs, &o, "data-dir", "log-level")
	registerIgnored(fs)
	cfg, code, ok := parseAndLoad(fs, args, cfgPath, &o, stdout, stderr)
	if !ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return migrateStore(ctx, cfg, *from, stdout, stderr)
}

// parseAndLoad parses a one-shot command's flags and loads its config; when
// ok is false the command exits with code.
func parseAndLoad(fs *flag.FlagSet, args []string, cfgPath *string, o *config.Overrides, stdout, stderr io.Writer) (*config.Config, int, bool) {
	if _, code, ok := parseFlags(fs, args, false, stdout, stderr); !ok {
		return nil, code, false
	}
	cfg, err := loadConfig(*cfgPath, *o)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm: invalid config:\n%v\n", err)
		return nil, exitError, false
	}
	return cfg, 0, true
}
