package storetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/store"
)

// Bad input that every entry point must reject with store.ErrInvalid.
var (
	badRepos = []store.Repo{
		{Registry: "hub", Name: "../x"},
		{Registry: "hub", Name: "a/../../b"},
		{Registry: "hub", Name: "a//b"},
		{Registry: "hub", Name: "A"},
		{Registry: "hub", Name: "%2e%2e"},
		{Registry: "hub", Name: ""},
		{Registry: "hub", Name: "."},
		{Registry: "hub", Name: ".."},
		{Registry: "hub", Name: "/etc"},
		{Registry: "hub", Name: "a/"},
		{Registry: "hub", Name: "a\\..\\b"},
		{Registry: "hub", Name: "_blobs"},
		{Registry: "hub", Name: "a/_tags"},
		{Registry: "hub", Name: "a\x00b"},
		{Registry: "hub", Name: strings.Repeat("a", 256)},
		{Registry: "../x", Name: "a"},
		{Registry: "..", Name: "a"},
		{Registry: "", Name: "a"},
		{Registry: "A", Name: "a"},
		{Registry: "a/b", Name: "a"},
		{Registry: "%2e%2e", Name: "a"},
		{Registry: "_x", Name: "a"},
	}
	badDigests = []digest.Digest{
		"",
		"sha256",
		"sha256:",
		"sha256:../../../etc/passwd",
		digest.Digest("sha256:" + strings.Repeat("A", 64)),
		digest.Digest("sha256:" + strings.Repeat("a", 63)),
		digest.Digest("sha256:" + strings.Repeat("a", 62) + "/."),
		digest.Digest("sha256:" + strings.Repeat("a", 65)),
		digest.Digest("sha512:" + strings.Repeat("a", 64)),
		digest.Digest("md5:" + strings.Repeat("a", 32)),
		digest.Digest("../sha256:" + strings.Repeat("a", 64)),
		digest.Digest("%2e%2e:" + strings.Repeat("a", 64)),
	}
	badTags = []string{"", "../x", "..", ".x", "-x", "a/b", "a b", "%2e%2e", strings.Repeat("a", 129)}
	badIDs  = []string{"", "../x", "..", "x/../../etc", "{" + "00000000-0000-0000-0000-000000000000" + "}"}
)

// RunInvalid calls every entry point of s with invalid registries,
// repositories, digests, tags and upload ids, and checks that each is
// rejected (store.ErrInvalid; store.ErrUploadUnknown for ids) and that
// nothing was created. s must be empty. Backends call it directly to check
// their storage afterwards.
func RunInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	good := newManifest(t, digest.SHA256, "good", nil)
	d := good.Digest
	invalid := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: error %v, want %v", what, err, store.ErrInvalid)
		}
	}

	for _, r := range badRepos {
		what := func(method string) string { return method + "(" + r.Registry + ", " + r.Name + ")" }
		_, err := s.StatBlob(ctx, r, d)
		invalid(what("StatBlob"), err)
		_, err = s.OpenBlob(ctx, r, d)
		invalid(what("OpenBlob"), err)
		_, err = s.Manifest(ctx, r, d)
		invalid(what("Manifest"), err)
		_, err = s.Tag(ctx, r, "v1")
		invalid(what("Tag"), err)
		_, err = s.Tags(ctx, r)
		invalid(what("Tags"), err)
		_, err = s.Referrers(ctx, r, d)
		invalid(what("Referrers"), err)
		invalid(what("PutBlob"), s.PutBlob(ctx, r, d, int64(len(good.Data)), strings.NewReader(string(good.Data))))
		invalid(what("LinkBlob"), s.LinkBlob(ctx, r, d))
		invalid(what("UnlinkBlob"), s.UnlinkBlob(ctx, r, d))
		invalid(what("PutManifest"), s.PutManifest(ctx, r, good, store.PutManifestOptions{Tag: "v1"}))
		invalid(what("SetTag"), s.SetTag(ctx, r, "v1", store.TagInfo{Digest: d}))
		invalid(what("DeleteTag"), s.DeleteTag(ctx, r, "v1"))
		invalid(what("DeleteManifest"), s.DeleteManifest(ctx, r, d))
		_, err = s.StartUpload(ctx, r, store.StartUploadOptions{})
		invalid(what("StartUpload"), err)
		id := "00000000-0000-0000-0000-000000000000"
		_, err = s.UploadStatus(ctx, r, id)
		invalid(what("UploadStatus"), err)
		_, err = s.AppendUpload(ctx, r, id, 0, strings.NewReader("x"))
		invalid(what("AppendUpload"), err)
		_, err = s.CommitUpload(ctx, r, id, d)
		invalid(what("CommitUpload"), err)
		invalid(what("CancelUpload"), s.CancelUpload(ctx, r, id))
		invalid(what("Manifests"), s.Manifests(ctx, r, func(digest.Digest) error { return nil }))
		if r.Name == "a" && r.Registry != "" { // "" lists every registry
			invalid(what("Repositories"), s.Repositories(ctx, r.Registry, func(store.Repo) error { return nil }))
		}
	}

	for _, bad := range badDigests {
		what := func(method string) string { return method + "(" + string(bad) + ")" }
		_, err := s.HasBlob(ctx, bad)
		invalid(what("HasBlob"), err)
		_, err = s.StatBlob(ctx, repoA, bad)
		invalid(what("StatBlob"), err)
		_, err = s.OpenBlob(ctx, repoA, bad)
		invalid(what("OpenBlob"), err)
		_, err = s.Manifest(ctx, repoA, bad)
		invalid(what("Manifest"), err)
		_, err = s.Referrers(ctx, repoA, bad)
		invalid(what("Referrers"), err)
		invalid(what("PutBlob"), s.PutBlob(ctx, repoA, bad, 1, strings.NewReader("x")))
		invalid(what("LinkBlob"), s.LinkBlob(ctx, repoA, bad))
		invalid(what("UnlinkBlob"), s.UnlinkBlob(ctx, repoA, bad))
		m := good
		m.Digest = bad
		invalid(what("PutManifest"), s.PutManifest(ctx, repoA, m, store.PutManifestOptions{}))
		subject := &ocispec.Descriptor{Digest: bad}
		invalid(what("PutManifest subject"), s.PutManifest(ctx, repoA, good, store.PutManifestOptions{Subject: subject}))
		invalid(what("SetTag"), s.SetTag(ctx, repoA, "v1", store.TagInfo{Digest: bad}))
		invalid(what("DeleteManifest"), s.DeleteManifest(ctx, repoA, bad))
		_, err = s.CommitUpload(ctx, repoA, "00000000-0000-0000-0000-000000000000", bad)
		invalid(what("CommitUpload"), err)
	}

	for _, tag := range badTags {
		what := func(method string) string { return method + "(" + tag + ")" }
		_, err := s.Tag(ctx, repoA, tag)
		invalid(what("Tag"), err)
		invalid(what("SetTag"), s.SetTag(ctx, repoA, tag, store.TagInfo{Digest: d}))
		invalid(what("DeleteTag"), s.DeleteTag(ctx, repoA, tag))
		if tag != "" { // PutManifest without a tag is fine
			invalid(what("PutManifest"), s.PutManifest(ctx, repoA, good, store.PutManifestOptions{Tag: tag}))
		}
	}

	for _, id := range badIDs {
		_, err := s.UploadStatus(ctx, repoA, id)
		wantErr(t, "UploadStatus("+id+")", err, store.ErrUploadUnknown)
		_, err = s.AppendUpload(ctx, repoA, id, 0, strings.NewReader("x"))
		wantErr(t, "AppendUpload("+id+")", err, store.ErrUploadUnknown)
		_, err = s.CommitUpload(ctx, repoA, id, d)
		wantErr(t, "CommitUpload("+id+")", err, store.ErrUploadUnknown)
		wantErr(t, "CancelUpload("+id+")", s.CancelUpload(ctx, repoA, id), store.ErrUploadUnknown)
	}

	// Nothing was stored by any of it.
	if got := collectRepos(t, s, ""); len(got) != 0 {
		t.Errorf("Repositories after invalid calls = %q, want none", got)
	}
	if got := collectBlobs(t, s); len(got) != 0 {
		t.Errorf("Blobs after invalid calls = %v, want none", got)
	}
	_, err := s.Manifest(ctx, repoA, d)
	wantErr(t, "Manifest after invalid puts", err, store.ErrManifestUnknown)
}
