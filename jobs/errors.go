package jobs

import (
	"errors"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// Error kinds of jobs; match them with errors.Is.
var (
	// ErrPermanent marks a job that can never succeed as asked: retrying
	// it is pointless.
	ErrPermanent = errors.New("permanent failure")
	// ErrUnknownRegistry is returned for an image naming no configured
	// registry or connector host.
	ErrUnknownRegistry = errors.New("unknown registry or host")
)

// Permanent reports whether err will not go away by retrying: bad input,
// unknown images, filtered repositories.
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrPermanent) || errors.Is(err, ErrUnknownRegistry) || errors.Is(err, events.ErrBadMessage) ||
		errors.Is(err, ref.ErrInvalidImage) || errors.Is(err, store.ErrInvalid) ||
		errors.Is(err, manifest.ErrTooManyReferences) {
		return true
	}
	if connector.IsTemporary(err) {
		return false
	}
	var ce *connector.Error
	if errors.As(err, &ce) {
		return ce.Excluded || ce.Status == 404 || ce.Status == 401 || ce.Status == 403
	}
	return errors.Is(err, store.ErrManifestUnknown) || errors.Is(err, store.ErrTagUnknown) ||
		errors.Is(err, store.ErrBlobUnknown) || errors.Is(err, store.ErrNameUnknown)
}
