package registryapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/regwarm/regwarm/internal/fault"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// Code is an OCI error code with its HTTP status and default message.
type Code struct {
	Name    string
	Status  int
	Message string
}

// The OCI distribution error table, plus the few codes distribution added.
var (
	CodeBlobUnknown         = Code{"BLOB_UNKNOWN", http.StatusNotFound, "blob unknown to registry"}
	CodeBlobUploadInvalid   = Code{"BLOB_UPLOAD_INVALID", http.StatusBadRequest, "blob upload invalid"}
	CodeBlobUploadUnknown   = Code{"BLOB_UPLOAD_UNKNOWN", http.StatusNotFound, "blob upload unknown to registry"}
	CodeDigestInvalid       = Code{"DIGEST_INVALID", http.StatusBadRequest, "provided digest did not match uploaded content"}
	CodeManifestBlobUnknown = Code{"MANIFEST_BLOB_UNKNOWN", http.StatusNotFound, "manifest references a manifest or blob unknown to registry"}
	CodeManifestInvalid     = Code{"MANIFEST_INVALID", http.StatusBadRequest, "manifest invalid"}
	CodeManifestUnknown     = Code{"MANIFEST_UNKNOWN", http.StatusNotFound, "manifest unknown to registry"}
	CodeNameInvalid         = Code{"NAME_INVALID", http.StatusBadRequest, "invalid repository name"}
	CodeNameUnknown         = Code{"NAME_UNKNOWN", http.StatusNotFound, "repository name not known to registry"}
	CodeSizeInvalid         = Code{"SIZE_INVALID", http.StatusBadRequest, "provided length did not match content length"}
	CodeTooLarge            = Code{"SIZE_INVALID", http.StatusRequestEntityTooLarge, "content too large"}
	CodeTagInvalid          = Code{"TAG_INVALID", http.StatusBadRequest, "invalid tag"}
	CodeUnauthorized        = Code{"UNAUTHORIZED", http.StatusUnauthorized, "authentication required"}
	CodeDenied              = Code{"DENIED", http.StatusForbidden, "requested access to the resource is denied"}
	CodeUnsupported         = Code{"UNSUPPORTED", http.StatusMethodNotAllowed, "the operation is unsupported"}
	CodeTooManyRequests     = Code{"TOOMANYREQUESTS", http.StatusTooManyRequests, "too many requests"}
	CodePaginationInvalid   = Code{"PAGINATION_NUMBER_INVALID", http.StatusBadRequest, "invalid number of results requested"}
	CodeRangeInvalid        = Code{"RANGE_INVALID", http.StatusRequestedRangeNotSatisfiable, "invalid content range"}
	CodeUnavailable         = Code{"UNAVAILABLE", http.StatusServiceUnavailable, "service unavailable"}
	CodeUnknown             = Code{"UNKNOWN", http.StatusInternalServerError, "unknown error"}
)

// apiError is an error with an OCI code and a message safe for clients.
type apiError struct {
	code    Code
	message string
	detail  any
	header  http.Header
}

func (e *apiError) Error() string { return e.code.Name + ": " + e.message }

// errorf builds an apiError with a client-safe message.
func errorf(c Code, format string, args ...any) *apiError {
	msg := c.Message
	if format != "" {
		msg = fmt.Sprintf(format, args...)
	}
	return &apiError{code: c, message: msg}
}

// byKind is the one table from an error's fault kind to what the client
// sees, for errors that carry no more specific code (see classify).
// Internal and Corrupt are faults of ours: 500 with a generic message.
var byKind = map[fault.Kind]Code{
	fault.NotFound:    CodeNameUnknown, // refined by route in notFound
	fault.Invalid:     {CodeUnknown.Name, http.StatusBadRequest, "invalid request"},
	fault.Corrupt:     CodeUnknown,
	fault.Denied:      CodeDenied,
	fault.RateLimited: CodeTooManyRequests,
	fault.Unavailable: {CodeUnavailable.Name, http.StatusBadGateway, "upstream unavailable"},
	fault.Internal:    CodeUnknown,
}

// bySentinel gives the specific OCI codes of errors built from client input;
// their text is safe to send. The first match wins.
var bySentinel = []struct {
	err  error
	code Code
}{
	{ref.ErrInvalidDigest, CodeDigestInvalid},
	{ref.ErrUnsupported, CodeDigestInvalid},
	{store.ErrDigestMismatch, CodeDigestInvalid},
	{store.ErrSizeMismatch, CodeSizeInvalid},
	{store.ErrRangeInvalid, CodeRangeInvalid},
	{ref.ErrInvalidName, CodeNameInvalid},
	{ref.ErrInvalidRegistry, CodeNameInvalid},
	{ref.ErrInvalidTag, CodeTagInvalid},
	{manifest.ErrInvalid, CodeManifestInvalid},
}

// classify maps any error to an apiError for route rt: an apiError as it
// is; client-input errors with their OCI code and text; anything else by its
// fault kind with the code's generic message. Faults of ours (Internal,
// Corrupt: status 500) never carry their text; the caller logs it.
func classify(err error, rt route) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	k := fault.Of(err)
	switch k {
	case fault.Invalid:
		for _, s := range bySentinel {
			if errors.Is(err, s.err) {
				return errorf(s.code, "%s", clientMessage(err))
			}
		}
	case fault.NotFound:
		return errorf(notFound(err, rt), "")
	case fault.RateLimited:
		ae := errorf(CodeTooManyRequests, "upstream is rate limiting")
		if d := fault.RetryAfter(err); d > 0 {
			ae.header = http.Header{"Retry-After": {strconv.Itoa(int(d.Seconds() + 0.999))}}
		}
		return ae
	case fault.Denied:
		return errorf(CodeDenied, "upstream denied access")
	}
	return errorf(byKind[k], "")
}

// notFound picks the OCI code of a NotFound error: the store's sentinel when
// it names one, else what the route asks for.
func notFound(err error, rt route) Code {
	switch {
	case errors.Is(err, store.ErrNameUnknown):
		return CodeNameUnknown
	case errors.Is(err, store.ErrUploadUnknown):
		return CodeBlobUploadUnknown
	case errors.Is(err, store.ErrBlobUnknown):
		return CodeBlobUnknown
	case errors.Is(err, store.ErrManifestUnknown), errors.Is(err, store.ErrTagUnknown):
		return CodeManifestUnknown
	}
	switch rt.kind {
	case routeBlob:
		return CodeBlobUnknown
	case routeManifest:
		return CodeManifestUnknown
	case routeUpload:
		return CodeBlobUploadUnknown
	}
	return CodeNameUnknown
}

// clientMessage returns err's text for errors built from client input only.
func clientMessage(err error) string {
	s := err.Error()
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError writes an OCI error body (no body for HEAD).
func writeError(w http.ResponseWriter, r *http.Request, ae *apiError) {
	for k, v := range ae.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodHead {
		w.WriteHeader(ae.code.Status)
		return
	}
	b, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: ae.code.Name, Message: ae.message, Detail: ae.detail}}})
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(ae.code.Status)
	_, _ = w.Write(append(b, '\n'))
}
