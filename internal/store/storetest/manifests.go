package storetest

import (
	"bytes"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/store"
)

func testManifestLifecycle(t *testing.T, s store.Store) {
	ctx := t.Context()
	m1 := newManifest(t, digest.SHA256, "one", nil)
	m2 := newManifest(t, digest.SHA256, "two", nil)

	_, err := s.Tags(ctx, repoA)
	wantErr(t, "Tags of an unknown repo", err, store.ErrNameUnknown)
	wantErr(t, "SetTag to an unknown manifest",
		s.SetTag(ctx, repoA, "v1", store.TagInfo{Digest: m1.Digest}), store.ErrManifestUnknown)

	putManifest(t, s, repoA, m1, store.PutManifestOptions{Tag: "v1", Source: "dockerhub"})
	got, err := s.Manifest(ctx, repoA, m1.Digest)
	if err != nil {
		t.Fatalf("Manifest: %v", err)
	}
	if !bytes.Equal(got.Data, m1.Data) || got.MediaType != m1.MediaType || got.Digest != m1.Digest || got.Source != "dockerhub" {
		t.Errorf("Manifest = %+v, want %+v with source dockerhub", got, m1)
	}
	// A manifest is readable through the blob endpoints of its repo.
	if got := readBlob(t, s, repoA, m1.Digest); !bytes.Equal(got, m1.Data) {
		t.Errorf("manifest read as a blob differs")
	}
	tag, err := s.Tag(ctx, repoA, "v1")
	if err != nil || tag.Digest != m1.Digest || tag.Source != "dockerhub" || tag.Checked.IsZero() {
		t.Errorf("Tag(v1) = %+v, %v; want %s from dockerhub, checked", tag, err, m1.Digest)
	}

	// Tag and retag.
	if err := s.SetTag(ctx, repoA, "latest", store.TagInfo{Digest: m1.Digest}); err != nil {
		t.Fatalf("SetTag(latest): %v", err)
	}
	putManifest(t, s, repoA, m2, store.PutManifestOptions{})
	if err := s.SetTag(ctx, repoA, "v1", store.TagInfo{Digest: m2.Digest, Source: "ghcr"}); err != nil {
		t.Fatalf("SetTag(v1) again: %v", err)
	}
	if tags, err := s.Tags(ctx, repoA); err != nil || !slices.Equal(tags, []string{"latest", "v1"}) {
		t.Errorf("Tags = %q, %v; want [latest v1]", tags, err)
	}
	if tag, err := s.Tag(ctx, repoA, "v1"); err != nil || tag.Digest != m2.Digest || tag.Source != "ghcr" {
		t.Errorf("Tag(v1) after retag = %+v, %v; want %s from ghcr", tag, err, m2.Digest)
	}

	// Deleting m1 takes "latest" with it but leaves "v1".
	if err := s.DeleteManifest(ctx, repoA, m1.Digest); err != nil {
		t.Fatalf("DeleteManifest: %v", err)
	}
	_, err = s.Manifest(ctx, repoA, m1.Digest)
	wantErr(t, "Manifest after delete", err, store.ErrManifestUnknown)
	_, err = s.StatBlob(ctx, repoA, m1.Digest)
	wantErr(t, "StatBlob of a deleted manifest", err, store.ErrBlobUnknown)
	_, err = s.Tag(ctx, repoA, "latest")
	wantErr(t, "Tag of a deleted manifest", err, store.ErrTagUnknown)
	if tags, err := s.Tags(ctx, repoA); err != nil || !slices.Equal(tags, []string{"v1"}) {
		t.Errorf("Tags after delete = %q, %v; want [v1]", tags, err)
	}
	wantErr(t, "DeleteManifest twice", s.DeleteManifest(ctx, repoA, m1.Digest), store.ErrManifestUnknown)

	if err := s.DeleteTag(ctx, repoA, "v1"); err != nil {
		t.Fatalf("DeleteTag: %v", err)
	}
	wantErr(t, "DeleteTag twice", s.DeleteTag(ctx, repoA, "v1"), store.ErrTagUnknown)
	_, err = s.Tag(ctx, repoA, "v1")
	wantErr(t, "Tag after DeleteTag", err, store.ErrTagUnknown)
	if tags, err := s.Tags(ctx, repoA); err != nil || len(tags) != 0 {
		t.Errorf("Tags of a known repo without tags = %q, %v; want empty", tags, err)
	}
	if _, err := s.Manifest(ctx, repoA, m2.Digest); err != nil {
		t.Errorf("Manifest after DeleteTag: %v", err)
	}
}

func testManifestDigestMismatch(t *testing.T, s store.Store) {
	m := newManifest(t, digest.SHA256, "bad", nil)
	m.Digest = digest.SHA256.FromString("something else")
	err := s.PutManifest(t.Context(), repoA, m, store.PutManifestOptions{Tag: "v1"})
	wantErr(t, "PutManifest with the wrong digest", err, store.ErrDigestMismatch)
	wantNoBlob(t, s, repoA, m.Digest)
	_, err = s.Manifest(t.Context(), repoA, m.Digest)
	wantErr(t, "Manifest after failed put", err, store.ErrManifestUnknown)
	_, err = s.Tag(t.Context(), repoA, "v1")
	wantErr(t, "Tag after failed put", err, store.ErrTagUnknown)
}

func testManifestSHA512(t *testing.T, s store.Store) {
	m := newManifest(t, digest.SHA512, "sha512", nil)
	putManifest(t, s, repoA, m, store.PutManifestOptions{Tag: "v1"})
	got, err := s.Manifest(t.Context(), repoA, m.Digest)
	if err != nil || !bytes.Equal(got.Data, m.Data) {
		t.Errorf("Manifest(sha512) = %d bytes, %v", len(got.Data), err)
	}
	if tag, err := s.Tag(t.Context(), repoA, "v1"); err != nil || tag.Digest != m.Digest {
		t.Errorf("Tag = %+v, %v; want %s", tag, err, m.Digest)
	}
}

func testManifestRepoIsolation(t *testing.T, s store.Store) {
	ctx := t.Context()
	m := newManifest(t, digest.SHA256, "isolated", nil)
	putManifest(t, s, repoA, m, store.PutManifestOptions{Tag: "v1"})
	for _, r := range []store.Repo{repoB, repoC} {
		_, err := s.Manifest(ctx, r, m.Digest)
		wantErr(t, "Manifest in another repo", err, store.ErrManifestUnknown)
		_, err = s.Tag(ctx, r, "v1")
		wantErr(t, "Tag in another repo", err, store.ErrTagUnknown)
		wantErr(t, "DeleteManifest in another repo", s.DeleteManifest(ctx, r, m.Digest), store.ErrManifestUnknown)
		wantErr(t, "SetTag in another repo",
			s.SetTag(ctx, r, "v1", store.TagInfo{Digest: m.Digest}), store.ErrManifestUnknown)
	}
	if _, err := s.Manifest(ctx, repoA, m.Digest); err != nil {
		t.Errorf("Manifest in its own repo: %v", err)
	}
}

func testReferrers(t *testing.T, s store.Store) {
	ctx := t.Context()
	subject := newManifest(t, digest.SHA256, "subject", nil)
	putManifest(t, s, repoA, subject, store.PutManifestOptions{Tag: "v1"})
	subjectDesc := &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: int64(len(subject.Data))}

	if got, err := s.Referrers(ctx, repoA, subject.Digest); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("Referrers before any = %v, %v; want an empty slice", got, err)
	}

	sig := newManifest(t, digest.SHA256, "signature", subjectDesc)
	sbom := newManifest(t, digest.SHA512, "sbom", subjectDesc)
	putManifest(t, s, repoA, sig, store.PutManifestOptions{
		Subject:  subjectDesc,
		Referrer: ocispec.Descriptor{ArtifactType: "application/vnd.example.sig", Annotations: map[string]string{"k": "v"}},
	})
	putManifest(t, s, repoA, sbom, store.PutManifestOptions{
		Subject:  subjectDesc,
		Referrer: ocispec.Descriptor{MediaType: "application/vnd.custom", ArtifactType: "application/spdx+json"},
	})

	got, err := s.Referrers(ctx, repoA, subject.Digest)
	if err != nil {
		t.Fatalf("Referrers: %v", err)
	}
	want := []ocispec.Descriptor{
		{MediaType: sig.MediaType, Digest: sig.Digest, Size: int64(len(sig.Data)), ArtifactType: "application/vnd.example.sig", Annotations: map[string]string{"k": "v"}},
		{MediaType: "application/vnd.custom", Digest: sbom.Digest, Size: int64(len(sbom.Data)), ArtifactType: "application/spdx+json"},
	} // sha256 sorts before sha512
	if len(got) != len(want) {
		t.Fatalf("Referrers = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.MediaType != w.MediaType || g.Digest != w.Digest || g.Size != w.Size || g.ArtifactType != w.ArtifactType || len(g.Annotations) != len(w.Annotations) {
			t.Errorf("Referrers[%d] = %+v, want %+v", i, g, w)
		}
	}

	for _, r := range []store.Repo{repoB, repoC} {
		if got, err := s.Referrers(ctx, r, subject.Digest); err != nil || len(got) != 0 {
			t.Errorf("Referrers in another repo = %v, %v; want none", got, err)
		}
	}
	if got, err := s.Referrers(ctx, repoA, sig.Digest); err != nil || len(got) != 0 {
		t.Errorf("Referrers of a manifest without referrers = %v, %v; want none", got, err)
	}

	if err := s.DeleteManifest(ctx, repoA, sig.Digest); err != nil {
		t.Fatalf("DeleteManifest(referrer): %v", err)
	}
	got, err = s.Referrers(ctx, repoA, subject.Digest)
	if err != nil || len(got) != 1 || got[0].Digest != sbom.Digest {
		t.Errorf("Referrers after delete = %+v, %v; want only %s", got, err, sbom.Digest)
	}
}
