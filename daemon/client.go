package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
)

// Exit codes of the CLI verbs.
const (
	ExitOK       = 0
	ExitProblems = 1 // a sync failed, a scan found problems
	ExitError    = 2 // usage, config or connection error
)

// NATSURL is the URL a CLI verb uses: the override, nats.url, or the
// embedded server's address.
func NATSURL(cfg *config.Config, override string) string {
	switch {
	case override != "":
		return override
	case cfg.NATS.URL != "":
		return cfg.NATS.URL
	}
	return "nats://" + cfg.NATS.Embedded.Listen
}

// Sync force-syncs images through a running deployment and prints each
// outcome to w. It returns an exit code.
func Sync(ctx context.Context, cfg *config.Config, url string, images []string, timeout time.Duration, w io.Writer) int {
	var reqs []events.SyncRequest
	for _, img := range images {
		req, err := events.ParseSyncRequest([]byte(img))
		if err != nil {
			fmt.Fprintf(w, "regwarm sync: %v\n", err)
			return ExitError
		}
		reqs = append(reqs, req)
	}
	var auth []nats.Option
	if a := embeddedAuth(cfg, url); a != nil {
		auth = append(auth, a)
	}
	nc, err := events.Connect(url, natsConnAuth(cfg.NATS), "regwarm sync", slog.New(slog.DiscardHandler), false, auth...)
	if err != nil {
		fmt.Fprintf(w, "regwarm sync: %v\n", err)
		return ExitError
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(w, "regwarm sync: %v\n", err)
		return ExitError
	}
	setup := natsSetup(cfg)
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, _, err = setup.Apply(sctx, js)
	cancel()
	if err != nil {
		fmt.Fprintf(w, "regwarm sync: %v\n", err)
		return ExitError
	}
	ctx, cancel = context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	out, err := events.RequestSyncs(ctx, nc, js, setup.Subjects, reqs,
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
		return ExitError
	}
	code := ExitOK
	for _, o := range out {
		switch {
		case o.Err != nil && o.Seq == 0:
			fmt.Fprintf(w, "error   %s: %v\n", o.Image, o.Err)
			code = max(code, ExitError)
		case o.Err != nil:
			fmt.Fprintf(w, "waiting %s: %v (the job stays queued)\n", o.Image, o.Err)
			code = max(code, ExitProblems)
		case !o.Done:
			code = max(code, ExitProblems)
		}
	}
	fmt.Fprintf(w, "%d image(s) in %s\n", len(out), time.Since(start).Round(time.Millisecond))
	return code
}
