package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CopyStats counts what CopyFS did.
type CopyStats struct {
	Repositories int
	Blobs        int   // blob links made in the destination
	BlobsCopied  int   // of which content was copied (the rest was there)
	Bytes        int64 // content bytes copied
	Manifests    int
	Tags         int
	Missing      int // links whose content the source lacked (skipped)
}

// CopyFS copies every repository of the filesystem store src into dst
// (the S3 store, typically): blob links and their content (verified on
// write, as every write), manifests with their source, subject and
// referrers entry, tags with their source and check time, and last-pulled
// times. Content dst holds already is not copied again, so a second run
// after a first one copies only what changed; upload sessions are not
// copied. progress, when not nil, is called after each repository.
func CopyFS(ctx context.Context, dst Store, src *FS, progress func(Repo, CopyStats)) (CopyStats, error) {
	var st CopyStats
	err := src.Repositories(ctx, "", func(repo Repo) error {
		if err := copyRepo(ctx, dst, src, repo, &st); err != nil {
			return fmt.Errorf("copy %s: %w", repo, err)
		}
		st.Repositories++
		if progress != nil {
			progress(repo, st)
		}
		return nil
	})
	return st, err
}

func copyRepo(ctx context.Context, dst Store, src *FS, repo Repo, st *CopyStats) error {
	// Blobs (manifests included: they are linked as blobs too).
	err := walkDigests(ctx, filepath.Join(src.repoDir(repo), "_blobs"), false, func(d digest.Digest, _ fs.DirEntry) error {
		if _, err := dst.HasBlob(ctx, d); err == nil {
			st.Blobs++
			return dst.LinkBlob(ctx, repo, d)
		} else if !errors.Is(err, ErrBlobUnknown) {
			return err
		}
		b, err := src.OpenContent(ctx, d)
		if errors.Is(err, ErrBlobUnknown) {
			st.Missing++
			return nil
		}
		if err != nil {
			return err
		}
		defer b.Close()
		if err := dst.PutBlob(ctx, repo, d, b.Size(), b); err != nil {
			return err
		}
		st.Blobs++
		st.BlobsCopied++
		st.Bytes += b.Size()
		return nil
	})
	if err != nil {
		return err
	}
	// Manifests, with what their links record.
	err = src.Manifests(ctx, repo, func(d digest.Digest) error {
		m, err := src.Manifest(ctx, repo, d)
		if errors.Is(err, ErrManifestUnknown) {
			st.Missing++
			return nil
		}
		if err != nil {
			return err
		}
		link, err := src.readManifestLink(repo, d)
		if err != nil {
			return err
		}
		opts := PutManifestOptions{Source: m.Source}
		if link.Subject != "" {
			opts.Subject = &ocispec.Descriptor{Digest: link.Subject}
			var desc ocispec.Descriptor
			if err := readJSON(src.referrerPath(repo, link.Subject, d), &desc); err == nil {
				opts.Referrer = desc
			}
		}
		if err := dst.PutManifest(ctx, repo, m, opts); err != nil {
			return err
		}
		st.Manifests++
		return nil
	})
	if err != nil {
		return err
	}
	// Tags, keeping source and check time.
	tags, err := src.Tags(ctx, repo)
	if err != nil && !errors.Is(err, ErrNameUnknown) {
		return err
	}
	for _, tag := range tags {
		info, err := src.Tag(ctx, repo, tag)
		if errors.Is(err, ErrTagUnknown) {
			continue
		}
		if err != nil {
			return err
		}
		if err := dst.SetTag(ctx, repo, tag, info); err != nil {
			if errors.Is(err, ErrManifestUnknown) {
				st.Missing++
				continue
			}
			return err
		}
		st.Tags++
	}
	// Last pulls.
	if pr, ok := dst.(PullRecorder); ok {
		pulls, err := src.LastPulled(ctx, repo)
		if err != nil {
			return err
		}
		if len(pulls) > 0 {
			if err := pr.RecordPulls(ctx, repo, pulls); err != nil {
				return err
			}
		}
	}
	return nil
}
