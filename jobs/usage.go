package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/regwarm/regwarm/internal/store"
)

// UsageReport is what `regwarm usage` prints: bytes per registry and
// repository (distinct blobs and manifests), tags and last pull.
type UsageReport struct {
	Registries []RegistryUsage `json:"registries"`
}

// RegistryUsage is one registry's line of a UsageReport.
type RegistryUsage struct {
	Name         string      `json:"name"`
	Bytes        int64       `json:"bytes"`
	MaxBytes     int64       `json:"max_bytes"` // retention budget; 0: none
	Repositories []RepoUsage `json:"repositories"`
}

// RepoUsage is one repository's line of a UsageReport.
type RepoUsage struct {
	Name       string `json:"name"`
	Bytes      int64  `json:"bytes"`
	Tags       int    `json:"tags"`
	LastPulled string `json:"last_pulled"` // RFC 3339 UTC; "" never pulled
}

// UsageRegistry is a registry a usage report covers.
type UsageRegistry struct {
	Name     string
	MaxBytes int64 // retention budget; 0: none
}

// Usage reports the usage of registries, in order, or of the one named
// registry ("" for all).
func Usage(ctx context.Context, registries []UsageRegistry, st store.Store, registry string) (UsageReport, error) {
	rep := UsageReport{Registries: []RegistryUsage{}}
	if registry != "" && !slices.ContainsFunc(registries, func(r UsageRegistry) bool { return r.Name == registry }) {
		return rep, fmt.Errorf("%w: no registry named %q", ErrUnknownRegistry, registry)
	}
	for _, r := range registries {
		if registry != "" && r.Name != registry {
			continue
		}
		inv, err := Inventory(ctx, st, r.Name)
		if err != nil {
			return rep, fmt.Errorf("usage of %s: %w", r.Name, err)
		}
		ru := RegistryUsage{Name: r.Name, Bytes: inv.Bytes, MaxBytes: r.MaxBytes, Repositories: []RepoUsage{}}
		for _, repo := range inv.Repositories {
			u := RepoUsage{Name: repo.Name, Bytes: repo.Bytes, Tags: repo.Tags}
			if !repo.LastPulled.IsZero() {
				u.LastPulled = repo.LastPulled.UTC().Format(time.RFC3339)
			}
			ru.Repositories = append(ru.Repositories, u)
		}
		rep.Registries = append(rep.Registries, ru)
	}
	return rep, nil
}

// WriteJSON writes the report as one JSON document.
func (r UsageReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report as an aligned table: a line per registry
// (its bytes and budget), then one per repository.
func (r UsageReport) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGISTRY\tREPOSITORY\tBYTES\tTAGS\tLAST PULLED")
	for _, reg := range r.Registries {
		budget := "no budget"
		if reg.MaxBytes > 0 {
			budget = fmt.Sprintf("budget %s (%.0f%%)", humanBytes(reg.MaxBytes), 100*float64(reg.Bytes)/float64(reg.MaxBytes))
		}
		fmt.Fprintf(tw, "%s\t(all)\t%s\t\t%s\n", reg.Name, humanBytes(reg.Bytes), budget)
		for _, repo := range reg.Repositories {
			last := repo.LastPulled
			if last == "" {
				last = "never"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", reg.Name, repo.Name, humanBytes(repo.Bytes), repo.Tags, last)
		}
	}
	return tw.Flush()
}

// humanBytes formats n with a binary unit ("1.5 GiB").
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
