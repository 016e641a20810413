package registryapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/regwarm/regwarm/internal/connector"
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

// classify maps any error to an apiError. Errors it does not know become
// UNKNOWN with a generic message; the caller logs the original.
func classify(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var ce *connector.Error
	switch {
	case errors.Is(err, store.ErrBlobUnknown):
		return errorf(CodeBlobUnknown, "")
	case errors.Is(err, store.ErrManifestUnknown), errors.Is(err, store.ErrTagUnknown):
		return errorf(CodeManifestUnknown, "")
	case errors.Is(err, store.ErrNameUnknown):
		return errorf(CodeNameUnknown, "")
	case errors.Is(err, store.ErrUploadUnknown):
		return errorf(CodeBlobUploadUnknown, "")
	case errors.Is(err, store.ErrDigestMismatch), errors.Is(err, ref.ErrInvalidDigest), errors.Is(err, ref.ErrUnsupported):
		return errorf(CodeDigestInvalid, "%s", clientMessage(err))
	case errors.Is(err, store.ErrSizeMismatch):
		return errorf(CodeSizeInvalid, "")
	case errors.Is(err, store.ErrRangeInvalid):
		return errorf(CodeRangeInvalid, "%s", clientMessage(err))
	case errors.Is(err, ref.ErrInvalidName), errors.Is(err, ref.ErrInvalidRegistry):
		return errorf(CodeNameInvalid, "%s", clientMessage(err))
	case errors.Is(err, ref.ErrInvalidTag):
		return errorf(CodeTagInvalid, "%s", clientMessage(err))
	case errors.Is(err, manifest.ErrInvalid):
		return errorf(CodeManifestInvalid, "%s", clientMessage(err))
	case errors.As(err, &ce):
		return fromConnector(ce)
	}
	return errorf(CodeUnknown, "")
}

// clientMessage returns err's text for errors built from client input only.
func clientMessage(err error) string {
	s := err.Error()
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// fromConnector maps an upstream failure with no local fallback.
func fromConnector(ce *connector.Error) *apiError {
	switch {
	case ce.Status == http.StatusNotFound:
		if ce.Kind == connector.KindBlob {
			return errorf(CodeBlobUnknown, "")
		}
		return errorf(CodeManifestUnknown, "")
	case ce.Status == http.StatusTooManyRequests:
		ae := errorf(CodeTooManyRequests, "upstream %s is rate limiting", ce.Connector)
		if ce.RetryAfter > 0 {
			ae.header = http.Header{"Retry-After": {strconv.Itoa(int(ce.RetryAfter.Seconds() + 0.999))}}
		}
		return ae
	case ce.Status == http.StatusUnauthorized || ce.Status == http.StatusForbidden:
		return errorf(CodeDenied, "upstream %s denied access", ce.Connector)
	case ce.Excluded:
		return errorf(CodeNameUnknown, "repository not available through this registry")
	}
	ae := errorf(CodeUnavailable, "upstream %s unavailable", ce.Connector)
	ae.code.Status = http.StatusBadGateway
	return ae
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
