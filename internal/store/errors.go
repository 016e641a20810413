package store

import "errors"

// Error kinds returned by stores; match them with errors.Is.
var (
	ErrBlobUnknown     = errors.New("blob unknown")
	ErrManifestUnknown = errors.New("manifest unknown")
	ErrTagUnknown      = errors.New("tag unknown")
	ErrNameUnknown     = errors.New("repository unknown")
	ErrUploadUnknown   = errors.New("upload unknown")
	ErrTooManyUploads  = errors.New("too many open upload sessions")
	ErrDigestMismatch  = errors.New("content does not match digest")
	ErrSizeMismatch    = errors.New("content does not match size")
	ErrRangeInvalid    = errors.New("upload offset out of order")
	ErrInvalid         = errors.New("invalid argument")
)
