package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
)

// Garbage collection on S3 (docs/storage.md, docs/gc.md).
//
// Last use. S3 cannot set an object's modification time, so a use of item
// K (content, a link) is recorded by writing an empty marker used/K; an
// item's last use is the later of its own write time and its marker's.
// Every object the store writes carries its writer's clock in the
// x-amz-meta-regwarm-time header (Last-Modified has whole seconds only);
// objects without it count as written at the end of their Last-Modified
// second. A process writes a marker at most once per touch grain per item
// (it remembers its own uses), so a client pulling a blob again and again
// does not write on every request.
//
// Removal. S3 has no rename, so an item cannot be taken out of sight
// atomically. Small items (tags, links) are copied to trash/K first, then
// deleted, then their use re-checked; a used one is copied back (unless
// rewritten meanwhile). Content is not copied (it can be large): a marker
// trash/K says its removal is under way, then its use is re-checked, then
// it is deleted. A use writes used/K first, then looks for trash/K: if a
// removal is under way it waits for it to end and reads K again. Either
// the removal sees the use (and keeps K) or the use sees the removal (and
// K's absence). A writer of a small item likewise checks trash/K after
// its write and writes again if a removal took it. A removal that takes
// longer than s3RemovalLimit before its delete gives up, so a trash/K
// older than s3TrashStale is a crash's leftover: uses ignore it, and
// RecoverRemovals puts copies back and drops markers.
//
// Clocks: last-use times come from the writers' clocks and the cutoff
// from the collector's; hosts must agree to well within the gc delay
// minus the touch grain (and within s3TrashStale - s3RemovalLimit).

const (
	// s3RemovalLimit bounds a removal's time from its trash entry to its
	// delete; a slower one is abandoned.
	s3RemovalLimit = 10 * time.Second
	// s3TrashStale is the age after which a trash entry is a crash's.
	s3TrashStale = time.Minute
	// s3TimeMeta is the user metadata with an object's write time.
	s3TimeMeta = "X-Amz-Meta-Regwarm-Time"
	// useCacheEntries bounds the uses a process remembers.
	useCacheEntries = 100_000
	// touchWorkers bounds the concurrent touches of a manifest's references.
	touchWorkers = 8
)

// timeMeta is the user metadata of a write: the writer's clock.
func (s *S3) timeMeta() map[string]string {
	return map[string]string{"Regwarm-Time": strconv.FormatInt(s.now().UnixNano(), 10)}
}

// usedAt returns when an object was last written as precisely as known.
func usedAt(info minio.ObjectInfo) time.Time {
	t := info.LastModified.Truncate(time.Second).Add(time.Second - time.Nanosecond)
	if v := info.Metadata.Get(s3TimeMeta); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Unix(0, n)
		}
	}
	return t
}

// listedAt is an upper bound of a listed object's write time (listings
// carry no metadata): servers list it to the millisecond or the second.
func listedAt(obj minio.ObjectInfo) time.Time {
	t := obj.LastModified
	if t.Truncate(time.Second).Equal(t) {
		return t.Add(time.Second - time.Nanosecond)
	}
	return t.Truncate(time.Millisecond).Add(time.Millisecond - time.Nanosecond)
}

func (s *S3) usedKey(key string) string  { return s.prefix + "used/" + s.short(key) }
func (s *S3) trashKey(key string) string { return s.prefix + "trash/" + s.short(key) }

// useCache remembers when this process recorded uses, by key.
type useCache struct {
	mu  sync.Mutex
	max int
	m   map[string]time.Time
}

func (c *useCache) get(key string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.m[key]
	return t, ok
}

func (c *useCache) put(key string, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]time.Time{}
	}
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			if len(c.m) < c.max/2 {
				break
			}
		}
	}
	c.m[key] = t
}

func (c *useCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
}

// usedRecently returns when this process confirmed a use of key, if
// within the touch grain.
func (s *S3) usedRecently(key string) (time.Time, bool) {
	if s.touchGrain <= 0 {
		return time.Time{}, false
	}
	t, ok := s.uses.get(key)
	if !ok || s.now().Sub(t) >= s.touchGrain {
		return time.Time{}, false
	}
	return t, true
}

// touch records a use of key with its marker; a failure is not an error
// (reads must not fail on it) but is not remembered either.
func (s *S3) touch(ctx context.Context, key string) bool {
	_, err := s.client.PutObject(ctx, s.bucket, s.usedKey(key), strings.NewReader(""), 0,
		minio.PutObjectOptions{ContentType: "application/octet-stream", UserMetadata: s.timeMeta()})
	return err == nil
}

// statInfo returns an object's metadata; errNoObject if it is missing.
func (s *S3) statInfo(ctx context.Context, key string) (minio.ObjectInfo, error) {
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return info, s3Err("stat "+s.short(key), err)
	}
	return info, nil
}

// waitRemoval waits while a removal of key is under way (a fresh
// trash/key) and reports whether there was one.
func (s *S3) waitRemoval(ctx context.Context, key string) (bool, error) {
	waited := false
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		info, err := s.statInfo(ctx, s.trashKey(key))
		if errors.Is(err, errNoObject) {
			return waited, nil
		}
		if err != nil {
			return waited, err
		}
		if s.now().Sub(usedAt(info)) >= s3TrashStale {
			return waited, nil // a crash's leftover
		}
		waited = true
		select {
		case <-ctx.Done():
			return waited, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// useContent records a use of the content at key (unless this process did
// within the touch grain), waits out a removal under way and, when stat is
// set, returns the content's metadata: errNoObject if it is gone (without
// stat, the caller reads the object next, which tells). since is when the
// use was confirmed: what was read after it is protected for the grain.
func (s *S3) useContent(ctx context.Context, key string, stat bool) (info minio.ObjectInfo, since time.Time, err error) {
	if t, ok := s.usedRecently(key); ok {
		if stat {
			info, err = s.statInfo(ctx, key)
		}
		return info, t, err
	}
	start := s.now()
	touched := s.touch(ctx, key)
	if _, err := s.waitRemoval(ctx, key); err != nil {
		return info, start, err
	}
	if stat {
		info, err = s.statInfo(ctx, key)
	}
	if err == nil && touched {
		s.uses.put(key, start)
	}
	return info, start, err
}

// rewriteContent reports whether content of n bytes is stored at key,
// recording a use (writing it again is one); false means: PUT it.
func (s *S3) rewriteContent(ctx context.Context, key string, n int64) bool {
	if info, err := s.statInfo(ctx, key); err != nil || info.Size != n {
		return false // absent content is not being removed: write it
	}
	info, _, err := s.useContent(ctx, key, true)
	return err == nil && info.Size == n
}

// useSmall records a use of a small item (a link) and reports whether it
// exists. Its removal copies it aside first, so no wait is needed: read
// after the use, it is either gone or kept.
func (s *S3) useSmall(ctx context.Context, key string) (bool, error) {
	if _, ok := s.usedRecently(key); ok {
		return s.exists(ctx, key)
	}
	start := s.now()
	touched := s.touch(ctx, key)
	ok, err := s.exists(ctx, key)
	if ok && touched {
		s.uses.put(key, start)
	}
	return ok, err
}

// putChecked writes a small item a removal may take (tag, link): after
// the write it waits out a removal under way and writes again if the
// item went.
func (s *S3) putChecked(ctx context.Context, key string, data []byte) error {
	if err := s.putSmall(ctx, key, data); err != nil {
		return err
	}
	waited, err := s.waitRemoval(ctx, key)
	if err != nil || !waited {
		return err
	}
	if ok, err := s.exists(ctx, key); err != nil || ok {
		return err
	}
	return s.putSmall(ctx, key, data)
}

// touchReferences records a use of the content a manifest references,
// a few at a time; failures and absent content are ignored.
func (s *S3) touchReferences(ctx context.Context, data []byte) {
	refs := manifestRefs(data)
	if len(refs) == 0 {
		return
	}
	ch := make(chan digest.Digest)
	var wg sync.WaitGroup
	for range min(touchWorkers, len(refs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range ch {
				_, _, _ = s.useContent(ctx, s.blobKey(d), false)
			}
		}()
	}
	for _, d := range refs {
		ch <- d
	}
	close(ch)
	wg.Wait()
}

// dropMarkers removes the use markers of keys (best effort).
func (s *S3) dropMarkers(ctx context.Context, keys ...string) {
	for _, k := range keys {
		s.uses.drop(k)
		_ = s.remove(ctx, s.usedKey(k))
	}
}

// lastUse returns the latest use of the objects at keys (their writes and
// their markers), and whether the first exists with its metadata.
func (s *S3) lastUse(ctx context.Context, keys ...string) (time.Time, minio.ObjectInfo, bool, error) {
	var last time.Time
	var first minio.ObjectInfo
	found := false
	for i, k := range keys {
		for j, key := range []string{k, s.usedKey(k)} {
			info, err := s.statInfo(ctx, key)
			if errors.Is(err, errNoObject) {
				continue
			}
			if err != nil {
				return last, first, false, err
			}
			if i == 0 && j == 0 {
				first, found = info, true
			}
			if t := usedAt(info); t.After(last) {
				last = t
			}
		}
	}
	return last, first, found, nil
}

// CollectBlobs calls fn for each stored content with its size and last
// use (an upper bound: listings give whole seconds).
func (s *S3) CollectBlobs(ctx context.Context, fn func(Entry) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.mergeUses(ctx, s.prefix+"blobs/", fn)
}

// mergeUses lists the digest objects under dir and their markers side by
// side (both in key order) and calls fn with each object's later time.
func (s *S3) mergeUses(ctx context.Context, dir string, fn func(Entry) error) error {
	udir := s.usedKey(dir)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	marks := s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: udir, Recursive: true})
	var mark *minio.ObjectInfo
	next := func() error {
		mark = nil
		if obj, ok := <-marks; ok {
			if obj.Err != nil {
				return s3Err("list "+s.short(udir), obj.Err)
			}
			mark = &obj
		}
		return nil
	}
	if err := next(); err != nil {
		return err
	}
	return s.walkDigests(ctx, dir, func(d digest.Digest, obj minio.ObjectInfo) error {
		rel := strings.TrimPrefix(obj.Key, dir)
		e := Entry{Digest: d, Size: obj.Size, LastUsed: listedAt(obj)}
		for mark != nil && strings.TrimPrefix(mark.Key, udir) <= rel {
			if strings.TrimPrefix(mark.Key, udir) == rel && listedAt(*mark).After(e.LastUsed) {
				e.LastUsed = listedAt(*mark)
			}
			if err := next(); err != nil {
				return err
			}
		}
		return fn(e)
	})
}

// CollectManifests calls fn for each manifest linked in repo with its size
// and the later use of its link and its content.
func (s *S3) CollectManifests(ctx context.Context, repo Repo, fn func(Entry) error) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	var links []Entry
	if err := s.mergeUses(ctx, s.repoKey(repo)+"_manifests/", func(e Entry) error {
		links = append(links, e)
		return nil
	}); err != nil {
		return err
	}
	for _, e := range links {
		last, info, ok, err := s.lastUse(ctx, s.blobKey(e.Digest))
		if err != nil {
			return fmt.Errorf("collect manifest %s: %w", e.Digest, err)
		}
		e.Size = 0
		if ok {
			e.Size = info.Size
		}
		if last.After(e.LastUsed) {
			e.LastUsed = last
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// CollectBlobLinks calls fn for each blob link of repo.
func (s *S3) CollectBlobLinks(ctx context.Context, repo Repo, fn func(digest.Digest) error) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	return s.walkDigests(ctx, s.repoKey(repo)+"_blobs/", func(d digest.Digest, _ minio.ObjectInfo) error { return fn(d) })
}

// RemoveTag removes tag of repo if it still points at d.
func (s *S3) RemoveTag(ctx context.Context, repo Repo, tag string, d digest.Digest) (bool, error) {
	if err := check(ctx, repo, d); err != nil {
		return false, err
	}
	if err := checkTag(tag); err != nil {
		return false, err
	}
	return s.removeSmall(ctx, s.tagKey(repo, tag), time.Time{}, nil, func(data []byte) bool {
		var t tagFile
		return json.Unmarshal(data, &t) == nil && t.Digest == d
	})
}

// RemoveManifest removes repo's link of manifest d, then its referrers
// entry, blob link and pull record, unless the link or the content was
// used at or after cutoff.
func (s *S3) RemoveManifest(ctx context.Context, repo Repo, d digest.Digest, cutoff time.Time) (bool, error) {
	if err := check(ctx, repo, d); err != nil {
		return false, err
	}
	key, content := s.manifestLinkKey(repo, d), s.blobKey(d)
	var link manifestLink
	ok, err := s.removeSmall(ctx, key, cutoff, []string{content}, func(data []byte) bool {
		if json.Unmarshal(data, &link) != nil {
			link = manifestLink{}
		}
		return true
	})
	if err != nil || !ok {
		return false, err
	}
	for _, subject := range []digest.Digest{link.Subject, s.subjectOf(ctx, d)} {
		if subject != "" {
			if err := s.remove(ctx, s.referrerKey(repo, subject, d)); err != nil {
				return true, fmt.Errorf("remove manifest %s: %w", d, err)
			}
		}
	}
	for _, k := range []string{s.blobLinkKey(repo, d), s.pullKey(repo, d)} {
		if err := s.remove(ctx, k); err != nil {
			return true, fmt.Errorf("remove manifest %s: %w", d, err)
		}
	}
	s.dropMarkers(ctx, s.blobLinkKey(repo, d))
	return true, nil
}

// RemoveBlobLink removes repo's link of blob d unless the link or the
// content was used at or after cutoff.
func (s *S3) RemoveBlobLink(ctx context.Context, repo Repo, d digest.Digest, cutoff time.Time) (bool, error) {
	if err := check(ctx, repo, d); err != nil {
		return false, err
	}
	content := s.blobKey(d)
	return s.removeSmall(ctx, s.blobLinkKey(repo, d), cutoff, []string{content}, func([]byte) bool { return true })
}

// unusedSince reports whether none of keys was used at or after cutoff; an
// error counts as a use.
func (s *S3) unusedSince(ctx context.Context, cutoff time.Time, keys ...string) bool {
	last, _, _, err := s.lastUse(ctx, keys...)
	return err == nil && last.Before(cutoff)
}

// removeSmall removes the small object at key: unless it or the objects
// at also were used at or after cutoff (a zero cutoff skips the checks),
// it copies it to trash/key, deletes it, checks the uses again and asks
// decide (with the copy's bytes) whether it may go; if not, it is put
// back.
func (s *S3) removeSmall(ctx context.Context, key string, cutoff time.Time, also []string, decide func([]byte) bool) (bool, error) {
	last, info, found, err := s.lastUse(ctx, key)
	if err != nil || !found {
		return false, err
	}
	if !cutoff.IsZero() && (!last.Before(cutoff) || !s.unusedSince(ctx, cutoff, also...)) {
		return false, nil
	}
	start := time.Now()
	trash := s.trashKey(key)
	src := minio.CopySrcOptions{Bucket: s.bucket, Object: key, MatchETag: info.ETag}
	if _, err := s.client.CopyObject(ctx, minio.CopyDestOptions{Bucket: s.bucket, Object: trash}, src); err != nil {
		if isNoObject(err) || isPrecondition(err) {
			return false, nil // changed or removed meanwhile
		}
		return false, s3Err("remove "+s.short(key), err)
	}
	if time.Since(start) > s3RemovalLimit {
		return false, s.remove(ctx, trash)
	}
	if err := s.remove(ctx, key); err != nil {
		return false, err
	}
	data, err := s.getSmall(ctx, trash)
	if errors.Is(err, errNoObject) {
		return false, nil // a concurrent run (gc by hand beside a scheduled one) took it
	}
	if err != nil {
		return false, err // the entry stays for RecoverRemovals
	}
	if (cutoff.IsZero() || s.unusedSince(ctx, cutoff, append([]string{key}, also...)...)) && decide(data) {
		s.dropMarkers(ctx, key)
		return true, s.remove(ctx, trash)
	}
	if err := s.restore(ctx, trash, key); err != nil {
		return false, err
	}
	return false, nil
}

// isPrecondition reports a failed copy condition (the ETag changed).
func isPrecondition(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.Code == "PreconditionFailed" || r.StatusCode == 412
}

// restore copies trash back to key unless key was written meanwhile, then
// drops trash.
func (s *S3) restore(ctx context.Context, trash, key string) error {
	ok, err := s.exists(ctx, key)
	if err != nil {
		return err
	}
	if !ok {
		src := minio.CopySrcOptions{Bucket: s.bucket, Object: trash}
		if _, err := s.client.CopyObject(ctx, minio.CopyDestOptions{Bucket: s.bucket, Object: key}, src); err != nil {
			if err := s3Err("restore "+s.short(key), err); !errors.Is(err, errNoObject) {
				return err
			}
		}
		s.meta.drop(key)
	}
	return s.remove(ctx, trash)
}

// RemoveBlob removes the content of d unless it was used at or after
// cutoff, and returns its size.
func (s *S3) RemoveBlob(ctx context.Context, d digest.Digest, cutoff time.Time) (int64, bool, error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	if err := checkDigest(d); err != nil {
		return 0, false, err
	}
	key := s.blobKey(d)
	last, _, found, err := s.lastUse(ctx, key)
	if err != nil || !found || !last.Before(cutoff) {
		return 0, false, err
	}
	start := time.Now()
	trash := s.trashKey(key)
	if err := s.putSmall(ctx, trash, []byte(d)); err != nil {
		return 0, false, err
	}
	last, info, found, err := s.lastUse(ctx, key)
	if err != nil || !found || !last.Before(cutoff) || time.Since(start) > s3RemovalLimit {
		return 0, false, errors.Join(err, s.remove(ctx, trash))
	}
	if err := s.remove(ctx, key); err != nil {
		return 0, false, errors.Join(err, s.remove(ctx, trash))
	}
	s.manifests.drop(d)
	s.dropMarkers(ctx, key)
	return info.Size, true, s.remove(ctx, trash)
}

// RecoverRemovals finishes what removals a crash interrupted: copies of
// small items come back unless rewritten meanwhile; markers of content
// removals go (the content is there or not). Entries younger than
// s3TrashStale belong to removals still running and are left alone. It
// returns how many items came back or were never removed.
func (s *S3) RecoverRemovals(ctx context.Context) (int, error) {
	dir := s.prefix + "trash/"
	type entry struct{ trash, key string }
	var stale []entry
	err := s.list(ctx, dir, true, func(obj minio.ObjectInfo) error {
		if s.now().Sub(listedAt(obj)) >= s3TrashStale {
			stale = append(stale, entry{obj.Key, s.prefix + strings.TrimPrefix(obj.Key, dir)})
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("recover removals: %w", err)
	}
	n := 0
	for _, e := range stale {
		if strings.HasPrefix(e.key, s.prefix+"blobs/") {
			if ok, err := s.exists(ctx, e.key); err == nil && ok {
				n++
			}
			if err := s.remove(ctx, e.trash); err != nil {
				return n, fmt.Errorf("recover removals: %w", err)
			}
			continue
		}
		ok, err := s.exists(ctx, e.key)
		if err != nil {
			return n, fmt.Errorf("recover removals: %w", err)
		}
		if !ok {
			n++
		}
		if err := s.restore(ctx, e.trash, e.key); err != nil {
			return n, fmt.Errorf("recover removals: %w", err)
		}
	}
	return n, nil
}

// manifestRefs returns the digests a manifest names: config, layers and
// (for an index) child manifests, at most maxTouched; none if unreadable.
func manifestRefs(data []byte) []digest.Digest {
	type desc struct {
		Digest string `json:"digest"`
	}
	var m struct {
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		Manifests []desc `json:"manifests"`
	}
	if json.Unmarshal(data, &m) != nil {
		return nil
	}
	refs := append(m.Layers, m.Manifests...)
	if m.Config != nil {
		refs = append(refs, *m.Config)
	}
	var out []digest.Digest
	for _, r := range refs {
		if len(out) == maxTouched {
			break
		}
		if d, err := ref.ParseDigest(r.Digest); err == nil {
			out = append(out, d)
		}
	}
	return out
}
