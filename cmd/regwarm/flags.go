package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
)

// overrideFlags are the flags that override a config key for one process,
// in the order help lists them.
var overrideFlags = []struct{ name, usage string }{
	{"listen", "override serve.listen (the registry API; default 127.0.0.1:5000)"},
	{"metrics-listen", "override metrics.listen (/metrics, /healthz, /readyz; default 127.0.0.1:9466)"},
	{"data-dir", "override data_dir (default ./regwarm-data)"},
	{"nats-url", "override nats.url (default: the embedded NATS server)"},
	{"log-level", "override log.level: debug, info, warn or error"},
}

// daemonOverrides are the override flags each daemon mode uses; a worker
// serves no registry API.
var daemonOverrides = map[daemon.Mode][]string{
	daemon.ModeRun:    nil, // all
	daemon.ModeServe:  nil,
	daemon.ModeWorker: {"metrics-listen", "data-dir", "nats-url", "log-level"},
}

var daemonHelp = map[daemon.Mode]string{
	daemon.ModeRun: "embedded NATS (127.0.0.1:4222, JetStream in data_dir/nats) + registry API\n" +
		"(127.0.0.1:5000) + worker in one process; metrics on 127.0.0.1:9466.",
	daemon.ModeServe:  "the registry API only; publishes cache misses when nats.url is set.",
	daemon.ModeWorker: "sync jobs from NATS (nats.url) and the scheduled jobs.",
}

var oneShotHelp = map[string]string{
	"scan": "one-shot dangling-reference scan of the store. Exit 0 clean, 1 problems, 2 error.",
	"verify": "one-shot integrity check: re-hash stored content (corrupt content is quarantined and\n" +
		"re-fetched); references absent here but available upstream count as remote_only.\n" +
		"Exit 0 clean, 1 problems, 2 error.",
	"gc": "one-shot retention (registries[].retention) and garbage collection of the store, online:\n" +
		"lists what it removes (or, with --dry-run, would remove) and bytes per registry before and\n" +
		"after. Run it on a host that sees the store. While the deployment's NATS answers (nats.url\n" +
		"or the embedded server) it holds the cluster's gc lease, waiting while a worker's run holds\n" +
		"it; without NATS it runs alone. Exit 0 done, 2 error.",
}

// newFlagSet returns a flag set for a command whose -h prints usage, a
// description and the command's flags.
func newFlagSet(name, usageLine, description string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parseFlags reports errors and help itself
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s\n", usageLine)
		if description != "" {
			fmt.Fprintf(w, "\n%s\n", description)
		}
		shown := flag.NewFlagSet(name, flag.ContinueOnError)
		shown.SetOutput(w)
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.HasPrefix(f.Usage, ignoredUsage) {
				shown.Var(f.Value, f.Name, f.Usage)
				shown.Lookup(f.Name).DefValue = f.DefValue
			}
		})
		n := 0
		shown.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(w, "\nflags:\n")
			shown.PrintDefaults()
		}
	}
	return fs
}

// ignoredUsage marks the flags a command accepts, so that scripts written
// when every command took every override keep working, but does not use:
// help does not list them, and giving one prints a note.
const ignoredUsage = "ignored: "

// registerIgnored adds the override flags of overrideFlags that a command
// does not use and is not given in used.
func registerIgnored(fs *flag.FlagSet, used ...string) {
	for _, f := range overrideFlags {
		if fs.Lookup(f.name) == nil && !slices.Contains(used, f.name) {
			fs.String(f.name, "", ignoredUsage+"regwarm "+fs.Name()+" does not use it")
		}
	}
}

// noteIgnored tells on stderr about each ignored flag that was given.
func noteIgnored(fs *flag.FlagSet, stderr io.Writer) {
	fs.Visit(func(f *flag.Flag) {
		if strings.HasPrefix(f.Usage, ignoredUsage) {
			fmt.Fprintf(stderr, "regwarm %s: --%s has no effect here (ignored)\n", fs.Name(), f.Name)
		}
	})
}

// configFlag adds --config, the same for every command: without it a
// command uses the defaults `regwarm run` uses.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "config file (YAML); absent: the defaults, as for \"regwarm run\"")
}

// registerOverrides adds the override flags named in only (all when only
// is empty).
func registerOverrides(fs *flag.FlagSet, o *config.Overrides, only ...string) {
	targets := map[string]*string{
		"listen": &o.Listen, "metrics-listen": &o.MetricsListen, "data-dir": &o.DataDir,
		"nats-url": &o.NATSURL, "log-level": &o.LogLevel,
	}
	for _, f := range overrideFlags {
		if len(only) == 0 || slices.Contains(only, f.name) {
			fs.StringVar(targets[f.name], f.name, "", f.usage)
		}
	}
}

// parseFlags parses args. With positional, flags and arguments may come
// in any order (everything after "--" is an argument) and the arguments
// are returned; without, an argument is a usage error. ok is false when
// the command must exit with code: 0 after -h (help on stdout), 2 after a
// usage error (on stderr).
func parseFlags(fs *flag.FlagSet, args []string, positional bool, stdout, stderr io.Writer) (rest []string, code int, ok bool) {
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return nil, 0, false
		}
		if err != nil {
			return usageError(fs, stderr, err.Error())
		}
		if fs.NArg() == 0 {
			noteIgnored(fs, stderr)
			return rest, 0, true
		}
		if !positional {
			return usageError(fs, stderr, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
		}
		consumed := len(args) - fs.NArg()
		if consumed > 0 && args[consumed-1] == "--" {
			noteIgnored(fs, stderr)
			return append(rest, fs.Args()...), 0, true
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func usageError(fs *flag.FlagSet, stderr io.Writer, msg string) ([]string, int, bool) {
	fmt.Fprintf(stderr, "regwarm %s: %s\nrun \"regwarm %s -h\" for its flags\n", fs.Name(), msg, fs.Name())
	return nil, 2, false
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "--h"
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// loadConfig loads path (or the defaults when path is "") with overrides.
// Every command that reads a config uses it, so that all of them work
// without --config as `regwarm run` does.
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

// syncArg is an argument of `regwarm sync` that is not an image name.
type syncArg struct {
	image string
	err   error
}

// syncArgs qualifies each image like a pull would (qualifyImage) and
// splits them into valid ones and the others with what is wrong.
func syncArgs(cfg *config.Config, images []string) (good []string, bad []syncArg) {
	for _, img := range images {
		q := qualifyImage(cfg, img)
		if _, err := events.ParseSyncRequest([]byte(q)); err != nil {
			bad = append(bad, syncArg{img, err})
			continue
		}
		good = append(good, q)
	}
	return good, bad
}

// qualifyImage names the registry of img the way the registry API picks
// it for a pull: a first segment that is a host (has "." or ":", or is
// localhost) or names a configured registry is kept; otherwise, as for an
// unprefixed /v2/<repo>, the default registry is prepended (app:v1 is
// <default>/app:v1). Without a default registry img is returned as is.
func qualifyImage(cfg *config.Config, img string) string {
	def, ok := cfg.DefaultRegistry()
	if !ok || strings.HasPrefix(img, "{") {
		return img
	}
	first, _, hasSlash := strings.Cut(img, "/")
	if hasSlash {
		if strings.ContainsAny(first, ".:@") || first == "localhost" {
			return img
		}
		if _, ok := cfg.Registry(first); ok {
			return img
		}
	}
	return def.Name + "/" + img
}
