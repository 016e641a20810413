package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/ref"
)

// getJSON reads the JSON object at key into v; errNoObject if missing.
// Tags and manifest links may come from the metadata cache.
func (s *S3) getJSON(ctx context.Context, key string, v any) error {
	return s.readJSON(ctx, key, v, s.cacheable(key))
}

// readJSON is getJSON, with the metadata cache only when cacheable.
func (s *S3) readJSON(ctx context.Context, key string, v any, cacheable bool) error {
	data, ok := []byte(nil), false
	if cacheable {
		data, ok = s.meta.get(key)
	}
	if !ok {
		start := time.Now() // an entry's age counts from before the read
		var err error
		if data, err = s.getSmall(ctx, key); err != nil {
			return err
		}
		if cacheable {
			s.meta.put(key, data, start)
		}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", s.short(key), err)
	}
	return nil
}

// putJSONChecked is putJSON for an item garbage collection may remove
// (see putChecked).
func (s *S3) putJSONChecked(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", s.short(key), err)
	}
	return s.putChecked(ctx, key, data)
}

// putJSON writes v as JSON at key.
func (s *S3) putJSON(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", s.short(key), err)
	}
	return s.putSmall(ctx, key, data)
}

// Manifest returns a manifest linked in repo, verified against d.
func (s *S3) Manifest(ctx context.Context, repo Repo, d digest.Digest) (Manifest, error) {
	if err := check(ctx, repo, d); err != nil {
		return Manifest{}, err
	}
	link, err := s.readManifestLink(ctx, repo, d)
	if err != nil {
		return Manifest{}, err
	}
	data, ok := s.manifests.get(d)
	if !ok {
		data, err = s.getSmall(ctx, s.blobKey(d))
		if errors.Is(err, errNoObject) {
			return Manifest{}, fmt.Errorf("%w: %s in %s: content missing", ErrManifestUnknown, d, repo)
		}
		if err != nil {
			return Manifest{}, fmt.Errorf("read manifest %s: %w", d, err)
		}
		if got := d.Algorithm().FromBytes(data); got != d {
			return Manifest{}, fmt.Errorf("%w: %w: stored manifest %s hashes to %s", ErrCorrupt, ErrDigestMismatch, d, got)
		}
		s.manifests.add(d, data)
	}
	return Manifest{MediaType: link.MediaType, Digest: d, Data: data, Source: link.Source}, nil
}

// PutManifest verifies and stores m in repo, links it as a blob of repo,
// records it as a referrer of opts.Subject and points opts.Tag at it.
func (s *S3) PutManifest(ctx context.Context, repo Repo, m Manifest, opts PutManifestOptions) error {
	if err := check(ctx, repo, m.Digest); err != nil {
		return err
	}
	if opts.Tag != "" {
		if err := checkTag(opts.Tag); err != nil {
			return err
		}
	}
	var subject digest.Digest
	if opts.Subject != nil {
		if err := checkDigest(opts.Subject.Digest); err != nil {
			return err
		}
		subject = opts.Subject.Digest
	}
	if got := m.Digest.Algorithm().FromBytes(m.Data); got != m.Digest {
		return fmt.Errorf("%w: manifest hashes to %s, want %s", ErrDigestMismatch, got, m.Digest)
	}
	// A manifest written is a use of what it references: garbage
	// collection, re-checking before it deletes, keeps it.
	s.touchReferences(ctx, m.Data)
	if err := s.putContent(ctx, m.Digest, m.Data); err != nil {
		return err
	}
	if err := s.link(ctx, repo, m.Digest); err != nil {
		return err
	}
	// A re-put with another subject moves the referrers entry.
	var old manifestLink
	if err := s.readJSON(ctx, s.manifestLinkKey(repo, m.Digest), &old, false); err == nil && old.Subject != "" && old.Subject != subject {
		if err := s.remove(ctx, s.referrerKey(repo, old.Subject, m.Digest)); err != nil {
			return fmt.Errorf("put manifest %s: %w", m.Digest, err)
		}
	}
	now := s.now()
	link := manifestLink{MediaType: m.MediaType, Size: int64(len(m.Data)), Source: opts.Source, Subject: subject, Time: now}
	if err := s.putJSONChecked(ctx, s.manifestLinkKey(repo, m.Digest), link); err != nil {
		return err
	}
	if subject != "" {
		if err := s.putJSON(ctx, s.referrerKey(repo, subject, m.Digest), opts.ReferrerEntry(m)); err != nil {
			return err
		}
	}
	if opts.Tag != "" {
		s.untagging(ctx, repo, opts.Tag, m.Digest)
		tag := tagFile{Digest: m.Digest, Source: opts.Source, Checked: now}
		if err := s.putJSONChecked(ctx, s.tagKey(repo, opts.Tag), tag); err != nil {
			return err
		}
	}
	return nil
}

// DeleteManifest removes a manifest from repo with its blob link, every tag
// pointing at it and its referrers entry. The content stays.
func (s *S3) DeleteManifest(ctx context.Context, repo Repo, d digest.Digest) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	var link manifestLink
	err := s.readJSON(ctx, s.manifestLinkKey(repo, d), &link, false) // not the cache: another process may have deleted it
	if errors.Is(err, errNoObject) {
		return fmt.Errorf("%w: %s in %s", ErrManifestUnknown, d, repo)
	}
	if err != nil {
		return fmt.Errorf("read manifest link %s: %w", d, err)
	}
	if err := s.untagDigest(ctx, repo, d); err != nil {
		return err
	}
	for _, subject := range []digest.Digest{link.Subject, s.subjectOf(ctx, d)} {
		if subject == "" {
			continue
		}
		if err := s.remove(ctx, s.referrerKey(repo, subject, d)); err != nil {
			return fmt.Errorf("delete manifest %s: %w", d, err)
		}
	}
	if err := s.remove(ctx, s.manifestLinkKey(repo, d)); err != nil {
		return fmt.Errorf("delete manifest %s: %w", d, err)
	}
	if err := s.remove(ctx, s.blobLinkKey(repo, d)); err != nil {
		return fmt.Errorf("delete manifest %s: %w", d, err)
	}
	s.dropMarkers(ctx, s.manifestLinkKey(repo, d), s.blobLinkKey(repo, d))
	return nil
}

// Referrers lists the manifests of repo whose subject is d, sorted by
// digest; an empty slice when there are none.
func (s *S3) Referrers(ctx context.Context, repo Repo, d digest.Digest) ([]ocispec.Descriptor, error) {
	if err := check(ctx, repo, d); err != nil {
		return nil, err
	}
	var keys []digest.Digest
	err := s.list(ctx, s.referrerDirKey(repo, d), false, func(obj minio.ObjectInfo) error {
		alg, hex, _ := strings.Cut(path.Base(obj.Key), "-")
		if rd, err := ref.ParseDigest(alg + ":" + hex); err == nil && !strings.HasSuffix(obj.Key, "/") {
			keys = append(keys, rd)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list referrers of %s: %w", d, err)
	}
	descs := []ocispec.Descriptor{}
	for _, rd := range keys {
		// An entry whose manifest is gone is a leftover of an
		// interrupted delete.
		if ok, err := s.exists(ctx, s.manifestLinkKey(repo, rd)); err != nil || !ok {
			if err != nil {
				return nil, fmt.Errorf("list referrers of %s: %w", d, err)
			}
			continue
		}
		var desc ocispec.Descriptor
		err := s.getJSON(ctx, s.referrerKey(repo, d, rd), &desc)
		if errors.Is(err, errNoObject) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list referrers of %s: %w", d, err)
		}
		descs = append(descs, desc)
	}
	slices.SortFunc(descs, func(a, b ocispec.Descriptor) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	return descs, nil
}

// readManifestLink reads repo's link of d; ErrManifestUnknown if absent.
func (s *S3) readManifestLink(ctx context.Context, repo Repo, d digest.Digest) (manifestLink, error) {
	var link manifestLink
	err := s.getJSON(ctx, s.manifestLinkKey(repo, d), &link)
	if errors.Is(err, errNoObject) {
		return link, fmt.Errorf("%w: %s in %s", ErrManifestUnknown, d, repo)
	}
	if err != nil {
		return link, fmt.Errorf("read manifest link %s: %w", d, err)
	}
	return link, nil
}

// subjectOf returns the subject digest named by the stored manifest d, or
// "" when it has none or cannot be read.
func (s *S3) subjectOf(ctx context.Context, d digest.Digest) digest.Digest {
	data, ok := s.manifests.get(d)
	if !ok {
		var err error
		if data, err = s.getSmall(ctx, s.blobKey(d)); err != nil {
			return ""
		}
	}
	var m struct {
		Subject *struct {
			Digest string `json:"digest"`
		} `json:"subject"`
	}
	if json.Unmarshal(data, &m) != nil || m.Subject == nil {
		return ""
	}
	sd, err := ref.ParseDigest(m.Subject.Digest)
	if err != nil {
		return ""
	}
	return sd
}

// Tag resolves a tag of repo.
func (s *S3) Tag(ctx context.Context, repo Repo, tag string) (TagInfo, error) {
	if err := check(ctx, repo); err != nil {
		return TagInfo{}, err
	}
	if err := checkTag(tag); err != nil {
		return TagInfo{}, err
	}
	var t tagFile
	err := s.getJSON(ctx, s.tagKey(repo, tag), &t)
	if errors.Is(err, errNoObject) {
		return TagInfo{}, fmt.Errorf("%w: %s:%s", ErrTagUnknown, repo, tag)
	}
	if err != nil {
		return TagInfo{}, fmt.Errorf("read tag %s: %w", tag, err)
	}
	return TagInfo(t), nil
}

// Tags lists repo's tags in lexical order; ErrNameUnknown if repo does not
// exist.
func (s *S3) Tags(ctx context.Context, repo Repo) ([]string, error) {
	if err := check(ctx, repo); err != nil {
		return nil, err
	}
	tags := []string{}
	prefix := s.repoKey(repo) + "_tags/"
	err := s.list(ctx, prefix, false, func(obj minio.ObjectInfo) error {
		if name := strings.TrimPrefix(obj.Key, prefix); ref.ValidTag(name) == nil {
			tags = append(tags, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	if len(tags) == 0 {
		ok, err := s.isRepo(ctx, s.repoKey(repo))
		if err != nil {
			return nil, fmt.Errorf("list tags of %s: %w", repo, err)
		}
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrNameUnknown, repo)
		}
	}
	slices.Sort(tags)
	return tags, nil
}

// isRepo reports whether any link or tag exists under the repository key
// dir.
func (s *S3) isRepo(ctx context.Context, dir string) (bool, error) {
	for _, m := range repoMarkers {
		found := false
		err := s.list(ctx, dir+m+"/", true, func(minio.ObjectInfo) error {
			found = true
			return errStopWalk
		})
		if err != nil && !errors.Is(err, errStopWalk) {
			return false, err
		}
		if found {
			return true, nil
		}
	}
	return false, nil
}

// errStopWalk ends a listing early.
var errStopWalk = errors.New("stop")

// SetTag points a tag at a manifest linked in repo. A zero info.Checked is
// set to now.
func (s *S3) SetTag(ctx context.Context, repo Repo, tag string, info TagInfo) error {
	if err := check(ctx, repo, info.Digest); err != nil {
		return err
	}
	if err := checkTag(tag); err != nil {
		return err
	}
	// Tagging is a use of the manifest: garbage collection keeps it.
	ok, err := s.useSmall(ctx, s.manifestLinkKey(repo, info.Digest))
	if err != nil {
		return fmt.Errorf("set tag %s: %w", tag, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s in %s", ErrManifestUnknown, info.Digest, repo)
	}
	if info.Checked.IsZero() {
		info.Checked = s.now()
	}
	s.untagging(ctx, repo, tag, info.Digest)
	return s.putJSONChecked(ctx, s.tagKey(repo, tag), tagFile(info))
}

// untagging records a use of the manifest tag points at, if not d: it is
// left unreferenced from now on and garbage collection waits its delay.
func (s *S3) untagging(ctx context.Context, repo Repo, tag string, d digest.Digest) {
	var old tagFile
	if s.readJSON(ctx, s.tagKey(repo, tag), &old, false) == nil && old.Digest != d && checkDigest(old.Digest) == nil {
		s.touch(ctx, s.manifestLinkKey(repo, old.Digest))
	}
}

// DeleteTag removes a tag; ErrTagUnknown if it does not exist.
func (s *S3) DeleteTag(ctx context.Context, repo Repo, tag string) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	if err := checkTag(tag); err != nil {
		return err
	}
	ok, err := s.exists(ctx, s.tagKey(repo, tag))
	if err != nil {
		return fmt.Errorf("delete tag %s: %w", tag, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s:%s", ErrTagUnknown, repo, tag)
	}
	return s.remove(ctx, s.tagKey(repo, tag))
}

// untagDigest removes every tag of repo that points at d.
func (s *S3) untagDigest(ctx context.Context, repo Repo, d digest.Digest) error {
	prefix := s.repoKey(repo) + "_tags/"
	var keys []string
	if err := s.list(ctx, prefix, false, func(obj minio.ObjectInfo) error {
		keys = append(keys, obj.Key)
		return nil
	}); err != nil {
		return fmt.Errorf("list tags of %s: %w", repo, err)
	}
	for _, key := range keys {
		var t tagFile
		if err := s.getJSON(ctx, key, &t); err != nil || t.Digest != d {
			continue
		}
		if err := s.remove(ctx, key); err != nil {
			return fmt.Errorf("delete tag %s: %w", path.Base(key), err)
		}
	}
	return nil
}

// RecordPulls records the pull times in pulls, keeping for each manifest
// the later of the stored and the given time (see FS.RecordPulls).
func (s *S3) RecordPulls(ctx context.Context, repo Repo, pulls map[digest.Digest]time.Time) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	unlock, err := s.pulls.lock(ctx, repo.String())
	if err != nil {
		return err
	}
	defer unlock()
	for d, t := range pulls {
		if err := check(ctx, repo, d); err != nil {
			return err
		}
		key := s.pullKey(repo, d)
		old, err := s.readPull(ctx, key)
		if err != nil && !errors.Is(err, errNoObject) {
			return err
		}
		sec := t.Unix()
		if err == nil && old.Unix() >= sec {
			continue
		}
		if err := s.putSmall(ctx, key, []byte(strconv.FormatInt(sec, 10))); err != nil {
			return fmt.Errorf("record pull of %s: %w", d, err)
		}
	}
	return nil
}

// LastPulled returns the recorded pull times of repo's manifests.
func (s *S3) LastPulled(ctx context.Context, repo Repo) (map[digest.Digest]time.Time, error) {
	if err := check(ctx, repo); err != nil {
		return nil, err
	}
	out := map[digest.Digest]time.Time{}
	err := s.walkDigests(ctx, s.repoKey(repo)+"_pulls/", func(d digest.Digest, obj minio.ObjectInfo) error {
		t, err := s.readPull(ctx, obj.Key)
		if errors.Is(err, errNoObject) {
			return nil
		}
		if err != nil {
			return err
		}
		out[d] = t
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("last pulled in %s: %w", repo, err)
	}
	return out, nil
}

// readPull reads a _pulls object.
func (s *S3) readPull(ctx context.Context, key string) (time.Time, error) {
	data, err := s.getSmall(ctx, key)
	if err != nil {
		return time.Time{}, err
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("decode %s: %w", s.short(key), err)
	}
	return time.Unix(sec, 0).UTC(), nil
}
