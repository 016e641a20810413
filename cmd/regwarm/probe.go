package main

import (
	"context"
	"fmt"
	"io"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
)

// probeConnectors reports, for `config check --probe`, whether each
// connector with a url answers as a registry; ok is false if one does not.
func probeConnectors(ctx context.Context, cfg *config.Config, w io.Writer) (ok bool) {
	ok = true
	for _, cn := range cfg.Connectors {
		if cn.URL == "" {
			fmt.Fprintf(w, "# probe: connector %s: local registry %s\n", cn.Name, cn.Registry)
			continue
		}
		if err := connector.Probe(ctx, cn.URL, nil); err != nil {
			fmt.Fprintf(w, "# probe: connector %s: NOT A REGISTRY: %v\n", cn.Name, err)
			ok = false
			continue
		}
		fmt.Fprintf(w, "# probe: connector %s: %s answers as a registry\n", cn.Name, cn.URL)
	}
	return ok
}
