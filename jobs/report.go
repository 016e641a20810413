package jobs

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Job names, as in reports, metrics and schedules.
const (
	JobDanglingScan = "dangling_scan"
	JobVerify       = "verify"
	JobRefresh      = "refresh"
)

// ReportVersion is the version of the report schema (docs/reports.md).
const ReportVersion = 1

// Problem reasons.
const (
	ReasonMissing          = "missing-local-and-upstream" // dangling: gone here and upstream
	ReasonConnectorRemoved = "connector-removed"          // the providing connector is no longer configured
	ReasonUpstreamError    = "upstream-error"             // could not tell; listed, not counted as dangling
	ReasonCorrupt          = "corrupt"                    // content does not hash to its digest (quarantined)
	ReasonAbsent           = "referenced-but-absent"      // a manifest references content the store lacks
	ReasonUnreferenced     = "unreferenced"               // stored, referenced by no manifest (garbage)
	// ReasonTooManyReferences: a manifest needs more upstream lookups than
	// its connector's max_manifest_entries (or lists more references than
	// manifest.MaxReferences); nothing of it was asked upstream. Listed,
	// not counted as dangling.
	ReasonTooManyReferences = "too-many-references"
)

// Report is the outcome of a scan or verification (CONTRACT.md, Reports).
type Report struct {
	Version  int       `json:"version"`
	Job      string    `json:"job"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Summary  Summary   `json:"summary"`
	Problems []Problem `json:"problems"`
	// Path is where the report was written (not part of the file).
	Path string `json:"-"`
	// GC, Removed and DryRun are a gc report's (report_gc.go); its JSON
	// has their shape instead of Summary and Problems.
	GC      *GCSummary `json:"-"`
	Removed []Removed  `json:"-"`
	DryRun  bool       `json:"-"`
}

// newReport starts the report of a job run, with a zero count for every
// configured registry (regs may be nil).
func newReport(job string, started time.Time, regs Registries) *Report {
	rep := &Report{Version: ReportVersion, Job: job, Started: started, Problems: []Problem{},
		Summary: Summary{ByRegistry: map[string]int{}}}
	if regs != nil {
		names := regs.RegistryNames()
		rep.Summary.Registries = len(names)
		for _, name := range names {
			rep.Summary.ByRegistry[name] = 0
		}
	}
	return rep
}

// Summary counts what a job looked at and found. Scan fields come first;
// verify fills the fields after them.
type Summary struct {
	Registries int            `json:"registries"`
	Manifests  int            `json:"manifests"`
	References int            `json:"references"`
	Local      int            `json:"local"`
	RemoteOnly int            `json:"remote_only"`
	Problems   int            `json:"problems"`
	ByRegistry map[string]int `json:"by_registry"`

	Blobs             int   `json:"blobs,omitempty"`
	Bytes             int64 `json:"bytes,omitempty"`
	Corrupt           int   `json:"corrupt,omitempty"`
	Quarantined       int   `json:"quarantined,omitempty"`
	Refetched         int   `json:"refetched,omitempty"`
	Absent            int   `json:"absent,omitempty"`
	Unreferenced      int   `json:"unreferenced,omitempty"`
	UnreferencedBytes int64 `json:"unreferenced_bytes,omitempty"`
	UpstreamErrors    int   `json:"upstream_errors,omitempty"`
	RepairsQueued     int   `json:"repairs_queued,omitempty"`
	// Unchecked counts references missing locally that were not asked
	// upstream because their manifest has too many (too-many-references).
	Unchecked int `json:"unchecked,omitempty"`
	// Repaired counts remote_only content verify fetched (verify --repair).
	Repaired int `json:"repaired,omitempty"`
}

// Problem is one finding.
type Problem struct {
	Registry   string   `json:"registry,omitempty"`
	Repository string   `json:"repository,omitempty"`
	Manifest   string   `json:"manifest,omitempty"`
	Tags       []string `json:"tags,omitempty"`
	Missing    string   `json:"missing,omitempty"`
	MediaType  string   `json:"media_type,omitempty"`
	Connector  string   `json:"connector,omitempty"`
	Reason     string   `json:"reason"`
	Digest     string   `json:"digest,omitempty"` // verify: the content concerned
	Size       int64    `json:"size,omitempty"`
	Detail     string   `json:"detail,omitempty"`
}

// Clean reports whether the report found nothing to act on (upstream
// errors are listed but do not make a scan unclean).
func (r *Report) Clean() bool { return r.Summary.Problems == 0 }

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	if r.Job == JobGC {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r.gcJSON())
	}
	if r.Problems == nil {
		r.Problems = []Problem{}
	}
	if r.Summary.ByRegistry == nil {
		r.Summary.ByRegistry = map[string]int{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for people: a summary, then one line per
// problem grouped by reason.
func (r *Report) WriteText(w io.Writer) error {
	if r.Job == JobGC {
		return r.writeGCText(w)
	}
	s := r.Summary
	var b strings.Builder
	fmt.Fprintf(&b, "regwarm %s report, %s (took %s)\n", r.Job, r.Finished.UTC().Format(time.RFC3339), r.Finished.Sub(r.Started).Round(time.Millisecond))
	switch r.Job {
	case JobVerify:
		fmt.Fprintf(&b, "checked %d blobs (%d bytes) and %d manifests: %d corrupt (%d quarantined, %d re-fetched), %d referenced but absent, %d unreferenced (%d bytes)\n",
			s.Blobs, s.Bytes, s.Manifests, s.Corrupt, s.Quarantined, s.Refetched, s.Absent, s.Unreferenced, s.UnreferencedBytes)
		if s.RemoteOnly > 0 || s.UpstreamErrors > 0 {
			fmt.Fprintf(&b, "%d references absent here but available upstream (remote-only, %d fetched by --repair), %d upstream errors\n",
				s.RemoteOnly, s.Repaired, s.UpstreamErrors)
		}
	default:
		fmt.Fprintf(&b, "%d registries, %d manifests, %d references: %d local, %d remote-only, %d dangling, %d upstream errors",
			s.Registries, s.Manifests, s.References, s.Local, s.RemoteOnly, s.Problems, s.UpstreamErrors)
		if s.Unchecked > 0 {
			fmt.Fprintf(&b, ", %d unchecked (too many references)", s.Unchecked)
		}
		b.WriteString("\n")
		regs := make([]string, 0, len(s.ByRegistry))
		for k := range s.ByRegistry {
			regs = append(regs, k)
		}
		sort.Strings(regs)
		for _, k := range regs {
			fmt.Fprintf(&b, "  %-20s %d dangling\n", k, s.ByRegistry[k])
		}
	}
	if len(r.Problems) == 0 {
		b.WriteString("no problems found\n")
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "%-26s", p.Reason)
		if p.Registry != "" {
			fmt.Fprintf(&b, " %s/%s", p.Registry, p.Repository)
		}
		if p.Manifest != "" {
			fmt.Fprintf(&b, " manifest %s", short(p.Manifest))
		}
		if len(p.Tags) > 0 {
			fmt.Fprintf(&b, " (tags %s)", strings.Join(p.Tags, ","))
		}
		if p.Missing != "" {
			fmt.Fprintf(&b, " missing %s", p.Missing)
		}
		if p.Digest != "" {
			fmt.Fprintf(&b, " %s", p.Digest)
		}
		if p.Size != 0 {
			fmt.Fprintf(&b, " %d bytes", p.Size)
		}
		if p.MediaType != "" {
			fmt.Fprintf(&b, " [%s]", p.MediaType)
		}
		if p.Connector != "" {
			fmt.Fprintf(&b, " via %s", p.Connector)
		}
		if p.Detail != "" {
			fmt.Fprintf(&b, ": %s", p.Detail)
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func short(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[:i+13]
	}
	return d
}

// Save writes the report as <dir>/<job>-<UTC timestamp>.json and
// <dir>/<job>-latest.json (both atomically) and sets r.Path.
func (r *Report) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("report directory: %w", err)
	}
	name := fmt.Sprintf("%s-%s.json", r.Job, r.Finished.UTC().Format("20060102T150405.000Z"))
	path := filepath.Join(dir, name)
	for _, p := range []string{path, filepath.Join(dir, r.Job+"-latest.json")} {
		if err := writeAtomic(p, r.WriteJSON); err != nil {
			return err
		}
	}
	r.Path = path
	return nil
}

func writeAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("writing report %s: %w", filepath.Base(path), err)
	}
	return nil
}
