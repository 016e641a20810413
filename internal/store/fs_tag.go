package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
)

// tagFile is the file _tags/<tag> of a repository.
type tagFile struct {
	Digest  digest.Digest `json:"digest"`
	Source  string        `json:"source,omitempty"`
	Checked time.Time     `json:"checked"`
}

// Tag resolves a tag of repo.
func (f *FS) Tag(ctx context.Context, repo Repo, tag string) (TagInfo, error) {
	if err := check(ctx, repo); err != nil {
		return TagInfo{}, err
	}
	if err := checkTag(tag); err != nil {
		return TagInfo{}, err
	}
	var t tagFile
	err := readJSON(f.tagPath(repo, tag), &t)
	if errors.Is(err, fs.ErrNotExist) {
		return TagInfo{}, fmt.Errorf("%w: %s:%s", ErrTagUnknown, repo, tag)
	}
	if err != nil {
		return TagInfo{}, fmt.Errorf("read tag %s: %w", tag, err)
	}
	return TagInfo(t), nil
}

// Tags lists repo's tags in lexical order; ErrNameUnknown if repo does not
// exist.
func (f *FS) Tags(ctx context.Context, repo Repo) ([]string, error) {
	if err := check(ctx, repo); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(f.repoDir(repo), "_tags"))
	if errors.Is(err, fs.ErrNotExist) {
		if !isRepoDir(f.repoDir(repo)) {
			return nil, fmt.Errorf("%w: %s", ErrNameUnknown, repo)
		}
	} else if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	tags := []string{}
	for _, e := range entries { // os.ReadDir sorts by name
		if e.Type().IsRegular() && ref.ValidTag(e.Name()) == nil {
			tags = append(tags, e.Name())
		}
	}
	return tags, nil
}

// SetTag points a tag at a manifest linked in repo. A zero info.Checked is
// set to now.
func (f *FS) SetTag(ctx context.Context, repo Repo, tag string, info TagInfo) error {
	if err := check(ctx, repo, info.Digest); err != nil {
		return err
	}
	if err := checkTag(tag); err != nil {
		return err
	}
	// Tagging is a use of the manifest: garbage collection keeps it.
	err := f.touchPath(f.manifestLink(repo, info.Digest))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s in %s", ErrManifestUnknown, info.Digest, repo)
	}
	if err != nil {
		return fmt.Errorf("set tag %s: %w", tag, err)
	}
	if info.Checked.IsZero() {
		info.Checked = f.now()
	}
	f.untagging(repo, tag, info.Digest)
	return f.writeJSON(f.tagPath(repo, tag), tagFile(info))
}

// DeleteTag removes a tag; ErrTagUnknown if it does not exist.
func (f *FS) DeleteTag(ctx context.Context, repo Repo, tag string) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	if err := checkTag(tag); err != nil {
		return err
	}
	err := os.Remove(f.tagPath(repo, tag))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s:%s", ErrTagUnknown, repo, tag)
	}
	if err != nil {
		return fmt.Errorf("delete tag %s: %w", tag, err)
	}
	return nil
}

// untagging marks the manifest tag points at now, if not d, as used: it is
// left unreferenced from now on and garbage collection waits its delay.
func (f *FS) untagging(repo Repo, tag string, d digest.Digest) {
	var old tagFile
	if readJSON(f.tagPath(repo, tag), &old) == nil && old.Digest != d && checkDigest(old.Digest) == nil {
		_ = f.forceTouch(f.manifestLink(repo, old.Digest))
	}
}

// untagDigest removes every tag of repo that points at d.
func (f *FS) untagDigest(repo Repo, d digest.Digest) error {
	dir := filepath.Join(f.repoDir(repo), "_tags")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list tags of %s: %w", repo, err)
	}
	for _, e := range entries {
		var t tagFile
		if err := readJSON(filepath.Join(dir, e.Name()), &t); err != nil || t.Digest != d {
			continue
		}
		if err := removeFile(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("delete tag %s: %w", e.Name(), err)
		}
	}
	return nil
}
