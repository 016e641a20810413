package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/store"
)

// Refresher re-resolves watched tags through their connectors and syncs
// the digests they now point at (jobs.refresh.images).
type Refresher struct {
	syncer *Syncer
	images []string
	log    *slog.Logger
	now    func() time.Time
}

// NewRefresher refreshes images, each "<registry>/<repo>:<tag or glob>".
func NewRefresher(s *Syncer, images []string, log *slog.Logger) *Refresher {
	return &Refresher{syncer: s, images: images, log: log, now: time.Now}
}

// Run refreshes every watched image and reports what changed: Summary
// counts tags checked (Manifests) and synced (RepairsQueued is unused);
// every failure is a problem with its reason in Detail.
func (r *Refresher) Run(ctx context.Context) (*Report, error) {
	rep := &Report{Version: ReportVersion, Job: JobRefresh, Started: r.now().UTC()}
	for _, img := range r.images {
		repo, pattern, err := splitWatch(img)
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{Reason: "invalid", Detail: err.Error()})
			continue
		}
		tags := []string{pattern}
		if strings.ContainsAny(pattern, "*?[") {
			all, err := r.syncer.tags(ctx, repo)
			if err != nil {
				rep.Problems = append(rep.Problems, Problem{Registry: repo.Registry, Repository: repo.Name, Reason: "refresh-failed", Detail: err.Error()})
				continue
			}
			tags = tags[:0]
			for _, t := range all {
				if ok, _ := path.Match(pattern, t); ok {
					tags = append(tags, t)
				}
			}
		}
		for _, tag := range tags {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			res, err := r.syncer.Run(ctx, r.syncer.target(repo, tag))
			rep.Summary.Manifests++
			if err != nil {
				rep.Problems = append(rep.Problems, Problem{Registry: repo.Registry, Repository: repo.Name, Tags: []string{tag},
					Reason: "refresh-failed", Detail: ErrorText(err)})
				continue
			}
			if res.BlobsFetched > 0 {
				rep.Summary.Refetched++
				r.log.Info("tag refreshed", "registry", repo.Registry, "repo", repo.Name, "tag", tag, "digest", res.Digest,
					"blobs_fetched", res.BlobsFetched, "bytes", res.Bytes)
			}
		}
	}
	rep.Summary.Problems = len(rep.Problems)
	rep.Finished = r.now().UTC()
	return rep, nil
}

// splitWatch parses "<registry>/<repo>:<tag or glob>".
func splitWatch(img string) (store.Repo, string, error) {
	reg, repo, pattern, problem := config.ParseRefreshImage(img)
	if problem != "" {
		return store.Repo{}, "", fmt.Errorf("refresh image %q: %s", img, problem)
	}
	return store.Repo{Registry: reg, Name: repo}, pattern, nil
}
