package jobs

import (
	"fmt"
	"math"
	"slices"

	"github.com/regwarm/regwarm/internal/config"
)

// ErrTooManyReferences is a sync's error for a manifest with more index
// entries, layers or referrers than its connector's max_manifest_entries
// (issue 11, finding 12). It is permanent: retrying cannot help.
var ErrTooManyReferences = fmt.Errorf("%w: too many references", ErrPermanent)

// manifestLimit is how many references of one manifest of reg from source
// ("" for a pushed one) regwarm may follow upstream, and the connectors
// that set it: the providing connector's max_manifest_entries, or the
// smallest of the registry's connectors for a pushed manifest. Without a
// connector to ask there is no limit (nothing is asked upstream;
// manifest.MaxReferences still bounds the manifest).
func manifestLimit(regs Registries, reg *config.Registry, source string) ([]string, int) {
	names := reg.Connectors
	if source != "" {
		names = []string{source}
	}
	limit := -1
	for _, name := range names {
		cn, ok := regs.Connector(name)
		if ok && slices.Contains(reg.Connectors, name) && (limit < 0 || cn.MaxManifestEntries < limit) {
			limit = cn.MaxManifestEntries
		}
	}
	if limit < 0 {
		return nil, math.MaxInt
	}
	return names, limit
}
