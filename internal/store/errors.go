package store

import "github.com/regwarm/regwarm/internal/fault"

// Error kinds returned by stores; match them with errors.Is. Each matches
// its fault kind too (errors.Is(ErrBlobUnknown, fault.NotFound)).
var (
	ErrBlobUnknown     = fault.New(fault.NotFound, "blob unknown")
	ErrManifestUnknown = fault.New(fault.NotFound, "manifest unknown")
	ErrTagUnknown      = fault.New(fault.NotFound, "tag unknown")
	ErrNameUnknown     = fault.New(fault.NotFound, "repository unknown")
	ErrUploadUnknown   = fault.New(fault.NotFound, "upload unknown")
	ErrTooManyUploads  = fault.New(fault.RateLimited, "too many open upload sessions")
	ErrDigestMismatch  = fault.New(fault.Invalid, "content does not match digest")
	ErrSizeMismatch    = fault.New(fault.Invalid, "content does not match size")
	ErrRangeInvalid    = fault.New(fault.Invalid, "upload offset out of order")
	ErrInvalid         = fault.New(fault.Invalid, "invalid argument")
	// ErrCorrupt is stored content that no longer hashes to its digest: a
	// fault of ours, never the client's. A read that finds it wraps
	// ErrDigestMismatch too, and its kind is fault.Corrupt.
	ErrCorrupt = fault.New(fault.Corrupt, "stored content is corrupt")
)

// ErrUnavailable is a storage backend that cannot be reached or failed
// (an S3 request error): a fault of ours, retried later.
var ErrUnavailable = fault.New(fault.Unavailable, "storage unavailable")
