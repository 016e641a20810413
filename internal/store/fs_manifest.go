package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/ref"
)

// manifestLink is the file _manifests/<alg>/<hex> of a repository.
type manifestLink struct {
	MediaType string        `json:"mediaType"`
	Size      int64         `json:"size"`
	Source    string        `json:"source,omitempty"`
	Subject   digest.Digest `json:"subject,omitempty"` // its referrers entry
	Time      time.Time     `json:"time"`
}

// Manifest returns a manifest linked in repo. Its bytes are verified
// against d before they are returned.
func (f *FS) Manifest(ctx context.Context, repo Repo, d digest.Digest) (Manifest, error) {
	if err := check(ctx, repo, d); err != nil {
		return Manifest{}, err
	}
	link, err := f.readManifestLink(repo, d)
	if err != nil {
		return Manifest{}, err
	}
	data, err := os.ReadFile(f.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, fmt.Errorf("%w: %s in %s: content missing", ErrManifestUnknown, d, repo)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s: %w", d, err)
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return Manifest{}, fmt.Errorf("%w: %w: stored manifest %s hashes to %s", ErrCorrupt, ErrDigestMismatch, d, got)
	}
	return Manifest{MediaType: link.MediaType, Digest: d, Data: data, Source: link.Source}, nil
}

// PutManifest verifies and stores m in repo, links it as a blob of repo,
// records it as a referrer of opts.Subject and points opts.Tag at it.
func (f *FS) PutManifest(ctx context.Context, repo Repo, m Manifest, opts PutManifestOptions) error {
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
	size := int64(len(m.Data))
	// A manifest written is a use of what it references: garbage
	// collection, re-checking before it deletes, keeps it.
	f.touchReferences(m.Data)
	if err := f.putContent(m.Digest, m.Data); err != nil {
		return err
	}
	if err := f.link(repo, m.Digest); err != nil {
		return err
	}

	// A re-put with another subject moves the referrers entry.
	if old, err := f.readManifestLink(repo, m.Digest); err == nil && old.Subject != "" && old.Subject != subject {
		if err := removeFile(f.referrerPath(repo, old.Subject, m.Digest)); err != nil {
			return fmt.Errorf("put manifest %s: %w", m.Digest, err)
		}
	}
	now := f.now()
	link := manifestLink{MediaType: m.MediaType, Size: size, Source: opts.Source, Subject: subject, Time: now}
	if err := f.writeJSON(f.manifestLink(repo, m.Digest), link); err != nil {
		return err
	}
	if subject != "" {
		if err := f.writeJSON(f.referrerPath(repo, subject, m.Digest), opts.ReferrerEntry(m)); err != nil {
			return err
		}
	}
	if opts.Tag != "" {
		f.untagging(repo, opts.Tag, m.Digest)
		tag := tagFile{Digest: m.Digest, Source: opts.Source, Checked: now}
		if err := f.writeJSON(f.tagPath(repo, opts.Tag), tag); err != nil {
			return err
		}
	}
	return nil
}

// DeleteManifest removes a manifest from repo with its blob link, every tag
// pointing at it and its referrers entry. The content stays.
func (f *FS) DeleteManifest(ctx context.Context, repo Repo, d digest.Digest) error {
	if err := check(ctx, repo, d); err != nil {
		return err
	}
	link, err := f.readManifestLink(repo, d)
	if err != nil {
		return err
	}
	if err := f.untagDigest(repo, d); err != nil {
		return err
	}
	// The link records the subject; older links may not, so the subject
	// field of the manifest itself is consulted too.
	for _, subject := range []digest.Digest{link.Subject, f.subjectOf(d)} {
		if subject == "" {
			continue
		}
		if err := removeFile(f.referrerPath(repo, subject, d)); err != nil {
			return fmt.Errorf("delete manifest %s: %w", d, err)
		}
	}
	err = os.Remove(f.manifestLink(repo, d))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s in %s", ErrManifestUnknown, d, repo)
	}
	if err != nil {
		return fmt.Errorf("delete manifest %s: %w", d, err)
	}
	if err := removeFile(f.blobLink(repo, d)); err != nil {
		return fmt.Errorf("delete manifest %s: %w", d, err)
	}
	return nil
}

// Referrers lists the manifests of repo whose subject is d, sorted by
// digest. It returns an empty slice when there are none.
func (f *FS) Referrers(ctx context.Context, repo Repo, d digest.Digest) ([]ocispec.Descriptor, error) {
	if err := check(ctx, repo, d); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(f.referrerDir(repo, d))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list referrers of %s: %w", d, err)
	}
	descs := []ocispec.Descriptor{}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		alg, hex, _ := strings.Cut(e.Name(), "-")
		rd, err := ref.ParseDigest(alg + ":" + hex)
		if err != nil || !e.Type().IsRegular() {
			continue // not ours
		}
		// An entry whose manifest is gone is a leftover of an
		// interrupted delete.
		if ok, err := exists(f.manifestLink(repo, rd)); err != nil || !ok {
			continue
		}
		var desc ocispec.Descriptor
		err = readJSON(f.referrerPath(repo, d, rd), &desc)
		if errors.Is(err, fs.ErrNotExist) {
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
func (f *FS) readManifestLink(repo Repo, d digest.Digest) (manifestLink, error) {
	var link manifestLink
	err := readJSON(f.manifestLink(repo, d), &link)
	if errors.Is(err, fs.ErrNotExist) {
		return link, fmt.Errorf("%w: %s in %s", ErrManifestUnknown, d, repo)
	}
	if err != nil {
		return link, fmt.Errorf("read manifest link %s: %w", d, err)
	}
	return link, nil
}

// subjectOf returns the subject digest named by the stored manifest d, or
// "" when it has none or cannot be read.
func (f *FS) subjectOf(d digest.Digest) digest.Digest {
	data, err := os.ReadFile(f.blobPath(d))
	if err != nil {
		return ""
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
