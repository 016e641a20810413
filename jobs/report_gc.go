package jobs

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// GCSummary is the summary of a gc report (CONTRACT.md, Reports).
type GCSummary struct {
	TagsRemoved      int                      `json:"tags_removed"`
	ManifestsRemoved int                      `json:"manifests_removed"`
	BlobsRemoved     int                      `json:"blobs_removed"`
	BytesFreed       int64                    `json:"bytes_freed"`
	ByRegistry       map[string]RegistryBytes `json:"by_registry"`
	// Extensions.
	LinksRemoved int `json:"links_removed"` // blob links nothing in their repository references
	// InUse counts items found in use while being removed (kept).
	InUse int `json:"in_use"`
	// Recovered counts removals a crash had interrupted, undone first.
	Recovered int `json:"recovered"`
	// BlobSweepSkipped: a remaining manifest could not be read, so what it
	// references is unknown and no blob was removed.
	BlobSweepSkipped bool `json:"blob_sweep_skipped,omitempty"`
}

// RegistryBytes is a registry's distinct content before and after a run.
type RegistryBytes struct {
	BytesBefore int64 `json:"bytes_before"`
	BytesAfter  int64 `json:"bytes_after"`
}

// Removed is one item a gc run removed (or would remove). Tag entries
// carry Tag and Manifest, manifest entries Manifest, blob entries Blob.
type Removed struct {
	Registry   string     `json:"registry,omitempty"`
	Repository string     `json:"repository,omitempty"`
	Tag        string     `json:"tag,omitempty"`
	Manifest   string     `json:"manifest,omitempty"`
	Blob       string     `json:"blob,omitempty"`
	Reason     string     `json:"reason"`
	LastPulled *time.Time `json:"last_pulled,omitempty"`
	Bytes      int64      `json:"bytes"`
}

// Kind is "tag", "manifest" or "blob", as the metrics name it.
func (e Removed) Kind() string {
	switch {
	case e.Tag != "":
		return "tag"
	case e.Blob != "":
		return "blob"
	}
	return "manifest"
}

// gcReport is the JSON form of a gc report.
type gcReport struct {
	Version  int       `json:"version"`
	Job      string    `json:"job"`
	DryRun   bool      `json:"dry_run"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Summary  GCSummary `json:"summary"`
	Removed  []Removed `json:"removed"`
}

func (r *Report) gcJSON() gcReport {
	out := gcReport{Version: r.Version, Job: r.Job, DryRun: r.DryRun, Started: r.Started, Finished: r.Finished, Removed: r.Removed}
	if r.GC != nil {
		out.Summary = *r.GC
	}
	if out.Summary.ByRegistry == nil {
		out.Summary.ByRegistry = map[string]RegistryBytes{}
	}
	if out.Removed == nil {
		out.Removed = []Removed{}
	}
	return out
}

// writeGCText writes a gc report for people.
func (r *Report) writeGCText(w io.Writer) error {
	s := r.gcJSON().Summary
	var b strings.Builder
	verb := "removed"
	if r.DryRun {
		verb = "would remove (dry run)"
	}
	fmt.Fprintf(&b, "regwarm gc report, %s (took %s)\n", r.Finished.UTC().Format(time.RFC3339), r.Finished.Sub(r.Started).Round(time.Millisecond))
	fmt.Fprintf(&b, "%s %d tags, %d manifests, %d blobs, %d blob links: %d bytes freed; %d kept because in use\n",
		verb, s.TagsRemoved, s.ManifestsRemoved, s.BlobsRemoved, s.LinksRemoved, s.BytesFreed, s.InUse)
	if s.BlobSweepSkipped {
		b.WriteString("a manifest could not be read: no blob or manifest was removed (run regwarm verify)\n")
	}
	regs := make([]string, 0, len(s.ByRegistry))
	for k := range s.ByRegistry {
		regs = append(regs, k)
	}
	sort.Strings(regs)
	for _, k := range regs {
		fmt.Fprintf(&b, "  %-20s %d bytes before, %d after\n", k, s.ByRegistry[k].BytesBefore, s.ByRegistry[k].BytesAfter)
	}
	for _, e := range r.Removed {
		fmt.Fprintf(&b, "%-13s %-8s", e.Reason, e.Kind())
		if e.Registry != "" {
			fmt.Fprintf(&b, " %s", e.Registry)
			if e.Repository != "" {
				fmt.Fprintf(&b, "/%s", e.Repository)
			}
		}
		if e.Tag != "" {
			fmt.Fprintf(&b, ":%s", e.Tag)
		}
		if e.Manifest != "" {
			fmt.Fprintf(&b, " %s", short(e.Manifest))
		}
		if e.Blob != "" {
			fmt.Fprintf(&b, " %s", short(e.Blob))
		}
		fmt.Fprintf(&b, " %d bytes", e.Bytes)
		if e.LastPulled != nil {
			fmt.Fprintf(&b, " last pulled %s", e.LastPulled.UTC().Format(time.RFC3339))
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}
