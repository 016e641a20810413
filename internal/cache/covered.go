package cache

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// One job per image: a client's cold pull publishes the miss of the
// manifest it asked for first (a tag, or a digest no recent pull listed);
// the sync job that miss queues walks the whole tree. What that manifest
// references (the platform manifests of an index, the config and layers of
// an image) is then "covered" for coverTTL: the client's misses of those
// are not published, so the pull queues one job, not one per blob. Work
// the cache does for a background job (a sync, a scheduled job) publishes
// no misses at all: the running job covers it.
const (
	coverTTL   = 10 * time.Minute
	coverLimit = 50_000 // entries; beyond it the oldest are forgotten
)

// coverSet remembers, per registry and repository, content a published
// miss's job will warm. Lock order: only its own mutex.
type coverSet struct {
	mu      sync.Mutex
	entries map[string]time.Time // registry/repo@digest → expiry
}

func coverKey(repo store.Repo, d digest.Digest) string { return repo.String() + "@" + d.String() }

// add covers what m (fetched for a client in repo) references.
func (s *coverSet) add(repo store.Repo, m *manifest.Manifest, now time.Time) {
	refs := m.Required()
	if len(refs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.entries == nil {
		s.entries = map[string]time.Time{}
	}
	if len(s.entries)+len(refs) > coverLimit {
		s.pruneLocked(now)
	}
	for _, d := range refs {
		if len(s.entries) >= coverLimit {
			return
		}
		s.entries[coverKey(repo, d.Digest)] = now.Add(coverTTL)
	}
}

// pruneLocked drops expired entries, and everything when that is not
// enough (a few misses too many then become jobs; nothing is lost).
func (s *coverSet) pruneLocked(now time.Time) {
	for k, exp := range s.entries {
		if now.After(exp) {
			delete(s.entries, k)
		}
	}
	if len(s.entries) > coverLimit/2 {
		clear(s.entries)
	}
}

// has reports whether d in repo is covered by a published miss's job.
func (s *coverSet) has(repo store.Repo, d digest.Digest, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.entries[coverKey(repo, d)]
	return ok && now.Before(exp)
}

// publishMiss decides whether miss m becomes an event (and so a job).
// Misses of background work are not published: the job that does it
// covers them.
func (c *Cache) publishMiss(md mode, m Miss) bool {
	if !md.client {
		return false
	}
	if m.Kind == metrics.KindManifest && !ref.IsDigest(m.Reference) {
		return true // a tag: the first miss of a pull
	}
	if c.covered.has(store.Repo{Registry: m.Registry, Name: m.Repository}, m.Digest, time.Now()) {
		c.log.Debug("miss covered by the image's job", "registry", m.Registry, "repo", m.Repository,
			"digest", m.Digest, "kind", m.Kind)
		return false
	}
	return true
}
