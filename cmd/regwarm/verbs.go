package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/jobs"
)

// Exit codes of the CLI verbs.
const (
	exitOK       = 0
	exitProblems = 1 // a sync failed, a scan found problems
	exitError    = 2 // usage, config or connection error
)

// syncImages force-syncs images through the deployment whose NATS is at
// url and prints each outcome to w. It returns an exit code.
func syncImages(ctx context.Context, cfg *config.Config, url string, images []string, timeout time.Duration, w io.Writer) int {
	var reqs []events.SyncRequest
	for _, img := range images {
		req, err := events.ParseSyncRequest([]byte(img))
		if err != nil {
			fmt.Fprintf(w, "regwarm sync: %v\n", err)
			return exitError
		}
		reqs = append(reqs, req)
	}
	nc, js, subj, err := daemon.Client(ctx, cfg, url, "regwarm sync")
	if err != nil {
		fmt.Fprintf(w, "regwarm sync: %v\n", err)
		return exitError
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	out, err := events.RequestSyncs(ctx, nc, js, subj, reqs,
		func(o events.Outcome) { fmt.Fprintf(w, "queued  %s (seq %d)\n", o.Image, o.Seq) },
		func(o events.Outcome) {
			r := o.Result
			if o.Done {
				fmt.Fprintf(w, "synced  %s %s: %d manifests, %d blobs fetched (%d bytes), %d present, %dms\n",
					o.Image, r.Digest, r.Manifests, r.BlobsFetched, r.Bytes, r.BlobsPresent, r.DurationMS)
			} else {
				fmt.Fprintf(w, "failed  %s: %s\n", o.Image, r.Error)
			}
		})
	if err != nil {
		fmt.Fprintf(w, "regwarm sync: %v\n", err)
		return exitError
	}
	code := exitOK
	for _, o := range out {
		switch {
		case o.Err != nil && o.Seq == 0:
			fmt.Fprintf(w, "error   %s: %v\n", o.Image, o.Err)
			code = max(code, exitError)
		case o.Err != nil:
			fmt.Fprintf(w, "waiting %s: %v (the job stays queued)\n", o.Image, o.Err)
			code = max(code, exitProblems)
		case !o.Done:
			code = max(code, exitProblems)
		}
	}
	fmt.Fprintf(w, "%d image(s) in %s\n", len(out), time.Since(start).Round(time.Millisecond))
	return code
}

// runJobOnce runs a scan or verification in this process and writes the
// report to output ("" for stdout) as text or JSON. It returns 0 clean, 1
// problems found, 2 error.
func runJobOnce(ctx context.Context, cfg *config.Config, job, format, output string, stdout, stderr io.Writer, log *slog.Logger) int {
	if format != "text" && format != "json" {
		fmt.Fprintf(stderr, "regwarm %s: --format must be text or json\n", job)
		return exitError
	}
	rep, err := daemon.RunJob(ctx, cfg, job, log)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm %s: %v\n", job, err)
		return exitError
	}
	w := stdout
	var file *os.File
	if output != "" {
		file, err = os.Create(output)
		if err != nil {
			fmt.Fprintf(stderr, "regwarm %s: %v\n", job, err)
			return exitError
		}
		w = file
	}
	if format == "json" {
		err = rep.WriteJSON(w)
	} else {
		err = rep.WriteText(w)
	}
	if file != nil {
		// A failed Close can lose the report's last bytes: it counts.
		if cerr := file.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "regwarm %s: writing report: %v\n", job, err)
		return exitError
	}
	if !rep.Clean() {
		return exitProblems
	}
	return exitOK
}

// printUsage prints `regwarm usage`: bytes per registry and repository,
// tags and last pull, of every registry or the one named. It returns 0 or
// exitError.
func printUsage(ctx context.Context, cfg *config.Config, registry, format string, stdout, stderr io.Writer) int {
	if format != "text" && format != "json" {
		fmt.Fprintln(stderr, "regwarm usage: --format must be text or json")
		return exitError
	}
	st, err := daemon.OpenStore(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm usage: %v\n", err)
		return exitError
	}
	regs := make([]jobs.UsageRegistry, 0, len(cfg.Registries))
	for _, r := range cfg.Registries {
		u := jobs.UsageRegistry{Name: r.Name}
		if r.Retention != nil {
			u.MaxBytes = int64(r.Retention.MaxBytes)
		}
		regs = append(regs, u)
	}
	rep, err := jobs.Usage(ctx, regs, st, registry)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm usage: %v\n", err)
		return exitError
	}
	if format == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "regwarm usage: %v\n", err)
		return exitError
	}
	return exitOK
}
