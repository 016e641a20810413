package jobs

import "github.com/regwarm/regwarm/internal/fault"

// Error kinds of jobs; match them with errors.Is.
var (
	// ErrPermanent marks a job that can never succeed as asked: retrying
	// it is pointless. Its kind is fault.Invalid.
	ErrPermanent = fault.New(fault.Invalid, "permanent failure")
	// ErrUnknownRegistry is returned for an image naming no configured
	// registry or connector host. Its kind is fault.NotFound.
	ErrUnknownRegistry = fault.New(fault.NotFound, "unknown registry or host")
)
