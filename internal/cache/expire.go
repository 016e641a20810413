package cache

import (
	"context"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

// ExpireTags marks cached connector tags stale, so that the next pull
// revalidates them with the connectors whatever tag_ttl says (an upstream
// delete notification). With tag set, that tag; with only d, every tag of
// repo pointing at d. Pushed tags are left alone, and no content is
// deleted. It returns how many tags it marked.
func (c *Cache) ExpireTags(ctx context.Context, repo store.Repo, tag string, d digest.Digest) (int, error) {
	var tags []string
	if tag != "" {
		tags = []string{tag}
	} else {
		all, err := c.store.Tags(ctx, repo)
		if errors.Is(err, store.ErrNameUnknown) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		tags = append(all, c.pending.tagNames(repo)...)
	}
	n := 0
	seen := map[string]bool{}
	for _, t := range tags {
		if seen[t] {
			continue
		}
		seen[t] = true
		// A tag answered but not written yet is written first, then marked.
		if pt, ok := c.pending.tag(repo, t); ok {
			if err := pt.storeNow(ctx); err != nil {
				return n, err
			}
		}
		info, err := c.store.Tag(ctx, repo, t)
		if errors.Is(err, store.ErrTagUnknown) || errors.Is(err, store.ErrNameUnknown) {
			continue
		}
		if err != nil {
			return n, err
		}
		if info.Source == "" || (tag == "" && info.Digest != d) || !info.Checked.After(staleTime) {
			continue
		}
		info.Checked = staleTime
		if err := c.store.SetTag(ctx, repo, t, info); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// staleTime is the check time of an expired tag: long ago, so any tag_ttl
// has passed (a zero time would mean "now" to the store).
var staleTime = time.Unix(1, 0).UTC()

// supersede drops a pending tag older than info, which a forced
// revalidation just stored: readers then find the new one in the store.
func (p *pendingSet) supersede(repo store.Repo, tag string, info store.TagInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.tags[tagKey(repo, tag)]; ok && t.info.Digest != info.Digest && !t.info.Checked.After(info.Checked) {
		delete(p.tags, tagKey(repo, tag))
	}
}
