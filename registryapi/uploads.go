package registryapi

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/store"
)

func uploadLocation(rt route, id string) string {
	return "/v2/" + rt.name + "/blobs/uploads/" + id
}

// setUploadHeaders writes Location, Range and the upload id.
func setUploadHeaders(w http.ResponseWriter, rt route, st store.UploadStatus) {
	end := st.Offset - 1
	if end < 0 {
		end = 0
	}
	hd := w.Header()
	hd.Set("Location", uploadLocation(rt, st.ID))
	hd.Set("Range", "0-"+strconv.FormatInt(end, 10))
	hd.Set("Docker-Upload-Uuid", st.ID)
	hd.Set("Content-Length", "0")
}

func blobCreated(w http.ResponseWriter, rt route, d digest.Digest) {
	hd := w.Header()
	hd.Set("Location", "/v2/"+rt.name+"/blobs/"+d.String())
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

func (h *Handler) startUpload(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	ctx := r.Context()
	q := r.URL.Query()
	if m := q.Get("mount"); m != "" {
		d, ae := parseDigestParam(m)
		if ae != nil {
			return ae
		}
		if h.tryMount(r, rt, d, q.Get("from")) {
			blobCreated(w, rt, d)
			return nil
		}
		// Not mountable: fall through to a normal upload session.
	} else if ds := q.Get("digest"); ds != "" {
		d, ae := parseDigestParam(ds)
		if ae != nil {
			return ae
		}
		if err := h.store.PutBlob(ctx, rt.repo, d, r.ContentLength, r.Body); err != nil {
			return h.fail(r, rt, err)
		}
		blobCreated(w, rt, d)
		return nil
	}
	limit := h.serve.MaxUploads
	st, err := h.store.StartUpload(ctx, rt.repo, store.StartUploadOptions{Owner: h.uploadUser(r), MaxPerRepo: limit, MaxPerOwner: limit})
	if errors.Is(err, store.ErrTooManyUploads) {
		return errorf(CodeTooManyRequests, "too many open upload sessions (serve.max_uploads: %d per repository and per user); "+
			"finish or cancel (DELETE) one, or wait for idle ones to expire after %s", limit, h.serve.UploadExpiry)
	}
	if err != nil {
		return h.fail(r, rt, err)
	}
	setUploadHeaders(w, rt, st)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// tryMount links d into rt.repo from the repository named by from, when d
// is stored and linked there. Without from, it succeeds only when the blob
// is already visible in rt.repo.
func (h *Handler) tryMount(r *http.Request, rt route, d digest.Digest, from string) bool {
	ctx := r.Context()
	if from == "" {
		_, err := h.store.StatBlob(ctx, rt.repo, d)
		return err == nil
	}
	src, ae := h.resolveName(from, "")
	if ae != nil {
		return false
	}
	if _, err := rt.read.StatBlob(ctx, src, d); err != nil {
		return false
	}
	// Only content really linked in from: a cache registry's StatBlob may
	// answer from its upstream's word alone (see the cache's sharing rule).
	if _, err := h.store.StatBlob(ctx, src, d); err != nil {
		return false
	}
	return h.store.LinkBlob(ctx, rt.repo, d) == nil
}

// uploadUser is the user a request acts as for upload sessions: "" when
// anonymous or without authentication. The request passed authorize.
func (h *Handler) uploadUser(r *http.Request) string {
	return h.uploadIdentity(r).user
}

// uploadIdentity is the identity behind uploadUser (no token and no user
// without authentication).
func (h *Handler) uploadIdentity(r *http.Request) identity {
	if h.auth == nil {
		return identity{}
	}
	id, err := h.auth.identify(r)
	if err != nil {
		return identity{}
	}
	return id
}

// ownUpload returns the status of the request's upload session. A session
// started by another user is unknown to it, except that a user who may
// delete in the registry may cancel anyone's session.
func (h *Handler) ownUpload(r *http.Request, rt route) (store.UploadStatus, *apiError) {
	st, err := h.store.UploadStatus(r.Context(), rt.repo, rt.ref)
	if err != nil {
		return st, h.fail(r, rt, err)
	}
	id := h.uploadIdentity(r)
	if st.Owner == id.user {
		return st, nil
	}
	if r.Method == http.MethodDelete && h.auth != nil && h.auth.permits(id, rt.name, rt.repo.Registry, actionDelete) {
		return st, nil
	}
	return st, errorf(CodeBlobUploadUnknown, "")
}

// routeAction is the action a request needs. Everything on an upload
// session is push: a user who may push may cancel (DELETE) their own
// upload without the delete right.
func routeAction(rt route, method string) string {
	if rt.kind == routeUpload && rt.ref != "" {
		return actionPush
	}
	return actionFor(method)
}

func (h *Handler) uploadStatus(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	st, ae := h.ownUpload(r, rt)
	if ae != nil {
		return ae
	}
	setUploadHeaders(w, rt, st)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// appendBody appends the request body to an upload, honouring Content-Range.
func (h *Handler) appendBody(r *http.Request, rt route) (store.UploadStatus, *apiError) {
	offset := int64(-1)
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, end, err := parseContentRange(cr)
		if err != nil {
			return store.UploadStatus{}, errorf(CodeRangeInvalid, "invalid Content-Range %q", truncate(cr))
		}
		if r.ContentLength >= 0 && r.ContentLength != end-start+1 {
			return store.UploadStatus{}, errorf(CodeRangeInvalid, "Content-Range %q does not match Content-Length %d", truncate(cr), r.ContentLength)
		}
		offset = start
	}
	st, err := h.store.AppendUpload(r.Context(), rt.repo, rt.ref, offset, r.Body)
	if err != nil {
		return st, h.fail(r, rt, err)
	}
	return st, nil
}

func (h *Handler) patchUpload(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	if _, ae := h.ownUpload(r, rt); ae != nil {
		return ae
	}
	st, ae := h.appendBody(r, rt)
	if ae != nil {
		if ae.code == CodeRangeInvalid {
			if cur, err := h.store.UploadStatus(r.Context(), rt.repo, rt.ref); err == nil {
				setUploadHeaders(w, rt, cur)
			}
		}
		return ae
	}
	setUploadHeaders(w, rt, st)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func (h *Handler) putUpload(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	ds := r.URL.Query().Get("digest")
	if ds == "" {
		return errorf(CodeDigestInvalid, "the digest query parameter is required")
	}
	d, ae := parseDigestParam(ds)
	if ae != nil {
		return ae
	}
	if _, ae := h.ownUpload(r, rt); ae != nil {
		return ae
	}
	if r.ContentLength != 0 {
		if _, ae := h.appendBody(r, rt); ae != nil {
			return ae
		}
	}
	if _, err := h.store.CommitUpload(r.Context(), rt.repo, rt.ref, d); err != nil {
		return h.fail(r, rt, err)
	}
	blobCreated(w, rt, d)
	return nil
}

func (h *Handler) cancelUpload(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	if _, ae := h.ownUpload(r, rt); ae != nil {
		return ae
	}
	if err := h.store.CancelUpload(r.Context(), rt.repo, rt.ref); err != nil {
		return h.fail(r, rt, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
