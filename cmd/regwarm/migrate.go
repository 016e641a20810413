package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/regwarm/regwarm/daemon"
	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// migrateStore runs `regwarm migrate`: it copies the filesystem store at from
// into the store cfg configures (S3, typically) with store.CopyFS, and
// reports what it copied. Run it again with serve stopped to pick up what
// changed meanwhile. It returns the exit code: 0, or exitError.
func migrateStore(ctx context.Context, cfg *config.Config, from string, stdout, stderr io.Writer) int {
	if from == "" {
		fmt.Fprintln(stderr, "regwarm migrate: --from is required (the filesystem store's root, e.g. <data_dir>/store)")
		return exitError
	}
	if cfg.Storage.S3 == nil && filepath.Clean(cfg.StoreRoot()) == filepath.Clean(from) {
		fmt.Fprintln(stderr, "regwarm migrate: --from is the configured store itself")
		return exitError
	}
	if err := cfg.CheckSecrets(); err != nil {
		fmt.Fprintf(stderr, "regwarm migrate: the config names credentials this environment does not provide:\n%v\n", err)
		return exitError
	}
	src, err := store.NewFS(from)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm migrate: source: %v\n", err)
		return exitError
	}
	dst, err := daemon.OpenStore(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm migrate: destination: %v\n", err)
		return exitError
	}
	st, err := store.CopyFS(ctx, dst, src, func(r store.Repo, st store.CopyStats) {
		fmt.Fprintf(stdout, "%s: %d manifests, %d tags so far\n", r, st.Manifests, st.Tags)
	})
	fmt.Fprintf(stdout, "copied %d repositories: %d blob links (%d contents, %d bytes copied), %d manifests, %d tags; %d missing in the source\n",
		st.Repositories, st.Blobs, st.BlobsCopied, st.Bytes, st.Manifests, st.Tags, st.Missing)
	if err != nil {
		fmt.Fprintf(stderr, "regwarm migrate: %v\n", err)
		return exitError
	}
	return 0
}
