package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

var _ PullRecorder = (*FS)(nil)

// pullPath is _pulls/<alg>/<hex> of a repository: the Unix time (seconds,
// decimal) of the manifest's last client pull. One small file per manifest,
// replaced atomically, so N serve processes never lose each other's
// updates to other manifests (an object per manifest on S3 works alike).
func (f *FS) pullPath(repo Repo, d digest.Digest) string {
	return filepath.Join(f.repoDir(repo), "_pulls", string(d.Algorithm()), d.Encoded())
}

// RecordPulls records the pull times in pulls, keeping for each manifest
// the later of the stored and the given time. Within a process the
// read-compare-replace is serialised per repository; across processes two
// writers of the same manifest in the same instant may leave the earlier
// of their times, which the next pull corrects.
func (f *FS) RecordPulls(ctx context.Context, repo Repo, pulls map[digest.Digest]time.Time) error {
	if err := check(ctx, repo); err != nil {
		return err
	}
	unlock, err := f.pulls.lock(ctx, repo.String())
	if err != nil {
		return err
	}
	defer unlock()
	for d, t := range pulls {
		if err := check(ctx, repo, d); err != nil {
			return err
		}
		p := f.pullPath(repo, d)
		old, err := readPull(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		sec := t.Unix()
		if err == nil && old.Unix() >= sec {
			continue
		}
		if err := f.writeFile(p, []byte(strconv.FormatInt(sec, 10))); err != nil {
			return fmt.Errorf("record pull of %s: %w", d, err)
		}
	}
	return nil
}

// LastPulled returns the recorded pull times of repo's manifests.
func (f *FS) LastPulled(ctx context.Context, repo Repo) (map[digest.Digest]time.Time, error) {
	if err := check(ctx, repo); err != nil {
		return nil, err
	}
	out := map[digest.Digest]time.Time{}
	err := walkDigests(ctx, filepath.Join(f.repoDir(repo), "_pulls"), false, func(d digest.Digest, _ fs.DirEntry) error {
		t, err := readPull(f.pullPath(repo, d))
		if errors.Is(err, fs.ErrNotExist) {
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

// readPull reads a _pulls file.
func readPull(path string) (time.Time, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("decode %s: %w", filepath.Base(path), err)
	}
	return time.Unix(sec, 0).UTC(), nil
}
