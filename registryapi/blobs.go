package registryapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

func parseDigestParam(s string) (digest.Digest, *apiError) {
	d, err := ref.ParseDigest(s)
	if err != nil {
		return "", errorf(CodeDigestInvalid, "%s", clientMessage(err))
	}
	return d, nil
}

func (h *Handler) getBlob(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	d, ae := parseDigestParam(rt.ref)
	if ae != nil {
		return ae
	}
	ctx := r.Context()
	hd := w.Header()
	etag := `"` + d.String() + `"`
	if r.Method == http.MethodHead {
		size, err := rt.read.StatBlob(ctx, rt.repo, d)
		if err != nil {
			return h.fail(r, rt, err)
		}
		setBlobHeaders(hd, d, etag)
		hd.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if h.redirect != nil {
		u, err := h.redirect.PresignBlob(ctx, rt.repo, d, redirectExpiry)
		if err == nil {
			hd.Set("Docker-Content-Digest", d.String())
			hd.Set("Location", u.String())
			w.WriteHeader(http.StatusTemporaryRedirect)
			return nil
		}
		if !errors.Is(err, store.ErrBlobUnknown) {
			h.log.Debug("blob redirect failed, serving it", "registry", rt.repo.Registry, "repo", rt.repo.Name, "digest", d, "error", err)
		}
	}
	b, err := rt.read.OpenBlob(ctx, rt.repo, d)
	if err != nil {
		return h.fail(r, rt, err)
	}
	defer b.Close()
	size := b.Size()
	if r.Header.Get("Range") != "" {
		if ae := h.awaitVerified(r, rt, b); ae != nil {
			return ae
		}
	}
	setBlobHeaders(hd, d, etag)
	if match := r.Header.Get("If-None-Match"); match != "" && match == etag {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	start, end, status := int64(0), size-1, http.StatusOK
	if rh := r.Header.Get("Range"); rh != "" {
		var err error
		if start, end, err = ParseRange(rh, size); err != nil {
			hd.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			return errorf(CodeRangeInvalid, "invalid or unsatisfiable Range %q", truncate(rh))
		}
		status = http.StatusPartialContent
		hd.Set("Content-Range", "bytes "+strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(end, 10)+"/"+strconv.FormatInt(size, 10))
	}
	n := end - start + 1
	var src io.Reader = b
	if f, ok := store.File(b); ok {
		// The *os.File itself, so io.CopyN reaches sendfile.
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return h.fail(r, rt, err)
		}
		src = f
	} else if sk, ok := b.(io.Seeker); ok && start > 0 {
		if _, err := sk.Seek(start, io.SeekStart); err != nil {
			return h.fail(r, rt, err)
		}
	} else if start > 0 {
		if _, err := io.CopyN(io.Discard, b, start); err != nil {
			return h.fail(r, rt, err)
		}
	}
	hd.Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(status)
	if n > 0 {
		var err error
		if _, isFile := src.(*os.File); isFile {
			_, err = io.CopyN(w, src, n) // sendfile
		} else if wt, ok := src.(io.WriterTo); ok && end == size-1 {
			_, err = wt.WriteTo(writerOnly{w}) // a blob arriving from upstream: written as it arrives
		} else {
			// A blob streaming in from upstream: large chunks, few syscalls.
			bp := copyBufs.Get().(*[]byte)
			_, err = io.CopyBuffer(writerOnly{w}, io.LimitReader(src, n), *bp)
			copyBufs.Put(bp)
		}
		if err != nil {
			// Headers are gone; the short body tells the client.
			h.log.Debug("blob body interrupted", "registry", rt.repo.Registry, "repo", rt.repo.Name, "digest", d, "error", err)
		}
	}
	return nil
}

// verifying is a blob still arriving from upstream (the cache's fill
// reader): WaitVerified returns once all of it hashed to its digest, or
// with the error that ended the fill.
type verifying interface {
	WaitVerified(ctx context.Context) error
}

// awaitVerified holds a Range answer on a blob still arriving from
// upstream until the whole blob is verified: a part of a blob cannot be
// checked against its digest on its own, so no part is sent before.
// (A whole-blob answer streams instead, holding back only its last byte.)
func (h *Handler) awaitVerified(r *http.Request, rt route, b store.Blob) *apiError {
	v, ok := b.(verifying)
	if !ok {
		return nil
	}
	err := v.WaitVerified(r.Context())
	if err == nil {
		return nil
	}
	if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) {
		// The upstream's fault, not the client's.
		h.log.Warn("upstream blob failed verification", "registry", rt.repo.Registry, "repo", rt.repo.Name,
			"digest", rt.ref, "error", err, "request_id", rt.id)
		ae := errorf(CodeUnavailable, "upstream sent content that does not match the digest")
		ae.code.Status = http.StatusBadGateway
		return ae
	}
	return h.fail(r, rt, err)
}

// copyBufs holds buffers for blobs that are not files.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// writerOnly hides io.ReaderFrom so io.CopyBuffer uses the given buffer.
type writerOnly struct{ io.Writer }

func setBlobHeaders(hd http.Header, d digest.Digest, etag string) {
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Etag", etag)
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("Cache-Control", "max-age=31536000")
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64]
	}
	return s
}

func (h *Handler) deleteBlob(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if ae := h.checkWrite(rt); ae != nil {
		return ae
	}
	d, ae := parseDigestParam(rt.ref)
	if ae != nil {
		return ae
	}
	if err := h.store.UnlinkBlob(r.Context(), rt.repo, d); err != nil {
		return h.fail(r, rt, err)
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}
