package registryapi

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// checkWrite refuses writes to registries without push.
func (h *Handler) checkWrite(rt route) *apiError {
	reg, ok := h.regs.Registry(rt.repo.Registry)
	if !ok || !reg.Push {
		return errorf(CodeDenied, "registry %q does not accept pushes", rt.repo.Registry)
	}
	return nil
}

// resolveManifest finds the manifest a tag or digest reference names.
func (h *Handler) resolveManifest(r *http.Request, rt route) (store.Manifest, *apiError) {
	ctx := r.Context()
	var d digest.Digest
	if ref.IsDigest(rt.ref) {
		var err error
		if d, err = ref.ParseDigest(rt.ref); err != nil {
			return store.Manifest{}, errorf(CodeDigestInvalid, "%s", clientMessage(err))
		}
	} else {
		if ref.ValidTag(rt.ref) != nil {
			return store.Manifest{}, errorf(CodeManifestUnknown, "invalid tag")
		}
		ti, err := rt.read.Tag(ctx, rt.repo, rt.ref)
		if err != nil {
			return store.Manifest{}, h.fail(r, rt, err)
		}
		d = ti.Digest
	}
	m, err := rt.read.Manifest(ctx, rt.repo, d)
	if err != nil {
		return store.Manifest{}, h.fail(r, rt, err)
	}
	return m, nil
}

func (h *Handler) getManifest(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	m, ae := h.resolveManifest(r, rt)
	if ae != nil {
		return ae
	}
	resolved := m.Digest
	if m, ae = h.negotiate(r, rt, m); ae != nil {
		return ae
	}
	if h.pulls != nil && r.Method == http.MethodGet {
		h.pulls.Pulled(rt.repo, resolved)
	}
	etag := `"` + m.Digest.String() + `"`
	hd := w.Header()
	hd.Set("Content-Type", m.MediaType)
	hd.Set("Docker-Content-Digest", m.Digest.String())
	hd.Set("Etag", etag)
	hd.Set("Content-Length", strconv.Itoa(len(m.Data)))
	if match := r.Header.Get("If-None-Match"); match != "" && match == etag {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.Data)
	}
	return nil
}

// negotiate applies the Accept header. A stored manifest is served as is
// when the client accepts its type (or sends no Accept, or a wildcard). An
// index asked for by a client that only accepts image manifests resolves to
// its linux/amd64 entry, as Docker Hub does; anything else is 404.
func (h *Handler) negotiate(r *http.Request, rt route, m store.Manifest) (store.Manifest, *apiError) {
	accept := acceptedTypes(r)
	if accept == nil || accept[m.MediaType] || accept["*/*"] {
		return m, nil
	}
	if manifest.IsIndex(m.MediaType) && !ref.IsDigest(rt.ref) {
		p, err := manifest.Parse(m.MediaType, m.Data)
		if err == nil {
			for _, c := range p.Manifests {
				if !accept[c.MediaType] || c.Platform == nil || c.Platform.OS != "linux" || c.Platform.Architecture != "amd64" {
					continue
				}
				child, err := rt.read.Manifest(r.Context(), rt.repo, c.Digest)
				if err != nil {
					return m, h.fail(r, rt, err)
				}
				return child, nil
			}
		}
	}
	return m, errorf(CodeManifestUnknown, "manifest of type %s found, but the Accept header does not allow it", m.MediaType)
}

// acceptedTypes returns the set of media types in Accept headers, or nil if
// the client sent none.
func acceptedTypes(r *http.Request) map[string]bool {
	vals := r.Header.Values("Accept")
	if len(vals) == 0 {
		return nil
	}
	out := map[string]bool{}
	for _, v := range vals {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil {
				out[mt] = true
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func (h *Handler) putManifest(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	ctx := r.Context()
	var tag string
	var want digest.Digest
	if ref.IsDigest(rt.ref) {
		d, err := ref.ParseDigest(rt.ref)
		if err != nil {
			return errorf(CodeDigestInvalid, "%s", clientMessage(err))
		}
		want = d
	} else {
		if err := ref.ValidTag(rt.ref); err != nil {
			return errorf(CodeTagInvalid, "%s", clientMessage(err))
		}
		tag = rt.ref
	}
	extraTags := r.URL.Query()["tag"]
	for _, t := range extraTags {
		if err := ref.ValidTag(t); err != nil {
			return errorf(CodeTagInvalid, "%s", clientMessage(err))
		}
	}
	if r.ContentLength > manifest.MaxSize {
		return errorf(CodeTooLarge, "manifest larger than %d bytes", manifest.MaxSize)
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, manifest.MaxSize+1))
	if err != nil {
		return errorf(CodeManifestInvalid, "reading body: %v", err)
	}
	if len(data) > manifest.MaxSize {
		return errorf(CodeTooLarge, "manifest larger than %d bytes", manifest.MaxSize)
	}
	p, err := manifest.Parse(r.Header.Get("Content-Type"), data)
	if err != nil {
		return errorf(CodeManifestInvalid, "%s", clientMessage(err))
	}
	alg := digest.Canonical
	if want != "" {
		alg = want.Algorithm()
	}
	d := alg.FromBytes(data)
	if want != "" && d != want {
		return errorf(CodeDigestInvalid, "manifest digest %s does not match the reference", d)
	}
	// A reference garbage collection is putting back (found in use while
	// being removed) is missing for a moment: look again before refusing.
	for i := 0; ; i++ {
		ae := h.checkReferences(r, rt, p)
		if ae == nil {
			break
		}
		if ae.code != CodeManifestBlobUnknown || i == recheckTries-1 || r.Context().Err() != nil {
			return ae
		}
		time.Sleep(recheckWait)
	}
	opts := store.PutManifestOptions{Tag: tag, Subject: p.Subject, Referrer: ocispec.Descriptor{
		MediaType: p.MediaType, ArtifactType: p.EffectiveArtifactType(), Annotations: p.Annotations,
	}}
	if err := h.store.PutManifest(ctx, rt.repo, store.Manifest{MediaType: p.MediaType, Digest: d, Data: data}, opts); err != nil {
		return h.fail(r, rt, err)
	}
	for _, t := range extraTags {
		if err := h.store.SetTag(ctx, rt.repo, t, store.TagInfo{Digest: d}); err != nil {
			return h.fail(r, rt, err)
		}
	}
	if ae := h.recheckReferences(r, rt, p, d); ae != nil {
		return ae
	}
	hd := w.Header()
	hd.Set("Location", "/v2/"+rt.name+"/manifests/"+d.String())
	hd.Set("Docker-Content-Digest", d.String())
	if p.Subject != nil {
		hd.Set("OCI-Subject", p.Subject.Digest.String())
	}
	if len(extraTags) > 0 {
		hd.Set("OCI-Tag", strings.Join(extraTags, ","))
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// checkReferences makes sure everything a pushed manifest references is
// present in the repository (non-distributable layers excepted).
func (h *Handler) checkReferences(r *http.Request, rt route, p *manifest.Manifest) *apiError {
	ctx := r.Context()
	if manifest.IsIndex(p.MediaType) {
		for _, c := range p.Manifests {
			if _, err := rt.read.Manifest(ctx, rt.repo, c.Digest); err != nil {
				if errors.Is(err, store.ErrManifestUnknown) {
					return errorf(CodeManifestBlobUnknown, "manifest %s is not in the repository", c.Digest)
				}
				return h.fail(r, rt, err)
			}
		}
		return nil
	}
	for _, d := range p.Required() {
		size, err := rt.read.StatBlob(ctx, rt.repo, d.Digest)
		if errors.Is(err, store.ErrBlobUnknown) {
			return errorf(CodeManifestBlobUnknown, "blob %s is not in the repository", d.Digest)
		}
		if err != nil {
			return h.fail(r, rt, err)
		}
		if size != d.Size {
			return errorf(CodeManifestInvalid, "blob %s has size %d, the manifest says %d", d.Digest, size, d.Size)
		}
	}
	return nil
}

// recheckReferences runs after a pushed manifest d is stored: garbage
// collection may have removed a referenced blob or child manifest between
// checkReferences and the store. Then the manifest goes again and the
// client is told what is missing, so it uploads it again: a stored
// manifest never points at nothing. A reference missing for a moment
// (collection restoring an item it found in use) is given a little time.
func (h *Handler) recheckReferences(r *http.Request, rt route, p *manifest.Manifest, d digest.Digest) *apiError {
	ctx := r.Context()
	missing := func() (digest.Digest, error) {
		if manifest.IsIndex(p.MediaType) {
			for _, c := range p.Manifests {
				if _, err := h.store.Manifest(ctx, rt.repo, c.Digest); errors.Is(err, store.ErrManifestUnknown) {
					return c.Digest, nil
				} else if err != nil {
					return "", err
				}
			}
			return "", nil
		}
		for _, ref := range p.Required() {
			if _, err := h.store.StatBlob(ctx, rt.repo, ref.Digest); errors.Is(err, store.ErrBlobUnknown) {
				return ref.Digest, nil
			} else if err != nil {
				return "", err
			}
		}
		return "", nil
	}
	var gone digest.Digest
	for i := range recheckTries {
		var err error
		if gone, err = missing(); err != nil {
			return h.fail(r, rt, err)
		}
		if gone == "" {
			return nil
		}
		if i < recheckTries-1 {
			select {
			case <-ctx.Done():
				return h.fail(r, rt, ctx.Err())
			case <-time.After(recheckWait):
			}
		}
	}
	if err := h.store.DeleteManifest(context.WithoutCancel(ctx), rt.repo, d); err != nil && !errors.Is(err, store.ErrManifestUnknown) {
		return h.fail(r, rt, err)
	}
	return errorf(CodeManifestBlobUnknown, "%s was removed while the manifest was pushed; upload it again", gone)
}

// recheckTries and recheckWait bound how long recheckReferences waits for
// a reference that is missing for a moment.
const (
	recheckTries = 3
	recheckWait  = 50 * time.Millisecond
)

func (h *Handler) deleteManifest(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	ctx := r.Context()
	var err error
	if ref.IsDigest(rt.ref) {
		d, perr := ref.ParseDigest(rt.ref)
		if perr != nil {
			return errorf(CodeDigestInvalid, "%s", clientMessage(perr))
		}
		err = h.store.DeleteManifest(ctx, rt.repo, d)
	} else {
		if ref.ValidTag(rt.ref) != nil {
			return errorf(CodeTagInvalid, "invalid tag")
		}
		err = h.store.DeleteTag(ctx, rt.repo, rt.ref)
	}
	if err != nil {
		return h.fail(r, rt, err)
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}
