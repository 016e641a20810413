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
  config check  validate and print the effective config
  version       print version and build info

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
		return runDaemon(daemon.ModeRun, args[1:], stderr)
	case "serve":
		return runDaemon(daemon.ModeServe, args[1:], stderr)
	case "worker":
		return runDaemon(daemon.ModeWorker, args[1:], stderr)
	case "sync":
		return syncCmd(args[1:], stdout, stderr)
	case "scan":
		return oneShot("scan", jobs.JobDanglingScan, args[1:], stdout, stderr)
	case "verify":
		return oneShot("verify", jobs.JobVerify, args[1:], stdout, stderr)
	case "config":
		if len(args) < 2 || args[1] != "check" {
			fmt.Fprint(stderr, "usage: regwarm config check --config FILE\n")
			return 2
		}
		return configCheck(args[2:], stdout, stderr)
	case "version", "--version", "-version":
		printVersion(stdout)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "regwarm: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// registerOverrides adds the flags that override config keys for one process.
func registerOverrides(fs *flag.FlagSet, o *config.Overrides) {
	fs.StringVar(&o.Listen, "listen", "", "override serve.listen")
	fs.StringVar(&o.MetricsListen, "metrics-listen", "", "override metrics.listen")
	fs.StringVar(&o.DataDir, "data-dir", "", "override data_dir")
	fs.StringVar(&o.NATSURL, "nats-url", "", "override nats.url")
	fs.StringVar(&o.LogLevel, "log-level", "", "override log.level")
}

// loadConfig loads path (or the defaults when path is "") with overrides.
func loadConfig(path string, o config.Overrides) (*config.Config, error) {
	cfg := config.Default()
	if path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, err
		}
	}
	if err := cfg.Override(o); err != nil {
		return nil, err
	}
	return cfg, nil
}

func runDaemon(mode daemon.Mode, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(string(mode), flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (YAML); defaults when absent")
	var o config.Overrides
	registerOverrides(fs, &o)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*cfgPath, o)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm: invalid config:\n%v\n", err)
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
	fs := flag.NewFlagSet("sync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (YAML); defaults when absent")
	natsURL := fs.String("nats-url", "", "NATS server (default: nats.url, else the embedded server's address)")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long to wait for the results")
	if err := fs.Parse(args); err != nil {
		return daemon.ExitError
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, "usage: regwarm sync [--config F] [--nats-url U] [--timeout D] IMAGE…\n")
		return daemon.ExitError
	}
	cfg, err := loadConfig(*cfgPath, config.Overrides{})
	if err != nil {
		fmt.Fprintf(stderr, "regwarm: invalid config:\n%v\n", err)
		return daemon.ExitError
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.Sync(ctx, cfg, daemon.NATSURL(cfg, *natsURL), fs.Args(), *timeout, stdout)
}

// oneShot runs job once as the command name.
func oneShot(name, job string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (YAML)")
	format := fs.String("format", "text", "report format: text or json")
	output := fs.String("output", "", "write the report to this file (default stdout)")
	var o config.Overrides
	registerOverrides(fs, &o)
	if err := fs.Parse(args); err != nil {
		return daemon.ExitError
	}
	if *cfgPath == "" {
		fmt.Fprintf(stderr, "regwarm %s: --config is required\n", name)
		return daemon.ExitError
	}
	cfg, err := loadConfig(*cfgPath, o)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm: invalid config:\n%v\n", err)
		return daemon.ExitError
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.OneShot(ctx, cfg, job, *format, *output, stdout, stderr, daemon.NewLogger(cfg.Log, stderr))
}

func configCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (YAML)")
	var o config.Overrides
	registerOverrides(fs, &o)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" {
		fmt.Fprint(stderr, "regwarm config check: --config is required\n")
		return 2
	}
	cfg, err := loadConfig(*cfgPath, o)
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid\n", *cfgPath)
		for _, e := range unjoin(err) {
			fmt.Fprintf(stderr, "  - %v\n", e)
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
	fmt.Fprintf(stdout, "# %s: valid; effective config:\n%s", *cfgPath, b)
	return 0
}

// unjoin flattens an errors.Join tree into its leaves.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
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
