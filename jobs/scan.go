package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
)

// DefaultScanConcurrency is how many upstream HEAD requests a scan keeps in
// flight unless WithScanConcurrency says otherwise.
const DefaultScanConcurrency = 8

// scanMaxRetryWait bounds how long a scan waits for an upstream's Retry-After
// before asking again. A longer wait is not waited out: the reference is
// reported as an upstream error and the next scan asks again.
const scanMaxRetryWait = 30 * time.Second

// errScanNoSource is the lookup error of a configured connector that the
// scanner's source function does not know (a wiring mismatch).
var errScanNoSource = errors.New("connector not available to the scan")

// Scanner is the dangling-reference scan (JobDanglingScan). It walks every
// manifest of every configured registry, one repository at a time, and
// checks each reference: the children of an index, the config and layers of
// an image (non-distributable layers excepted), and the subject. A
// reference absent from the store is looked up with a HEAD request through
// the connector that provided the manifest (through the registry's
// connectors, in order, for a pushed manifest). See CONTRACT.md, Reports,
// and docs/reports.md for the outcome.
//
// Memory is bounded by the largest repository, not by the store: only the
// current repositories' state is held (a few, while their upstream lookups
// are in flight), plus the problems found. Run may be called more than
// once, also concurrently.
type Scanner struct {
	regs  Registries
	store store.Store
	src   func(name string) (connector.Source, bool)
	log   *slog.Logger

	concurrency  int
	repair       func(ctx context.Context, image string) error
	now          func() time.Time
	maxRetryWait time.Duration
	err          error // the first invalid option, returned by Run
}

// ScanOption configures a Scanner.
type ScanOption func(*Scanner) error

// WithScanConcurrency sets how many upstream HEAD requests are in flight at
// once (default DefaultScanConcurrency); n must be at least 1.
func WithScanConcurrency(n int) ScanOption {
	return func(s *Scanner) error {
		if n < 1 {
			return fmt.Errorf("jobs: scan concurrency %d: must be at least 1", n)
		}
		s.concurrency = n
		return nil
	}
}

// WithRepair makes the scan queue a sync, by calling fn once, for every
// manifest with a reference that is missing locally but still available
// upstream and none that is dangling. image is
// "<registry>/<repo>@<digest>". A nil fn disables repair (the default).
func WithRepair(fn func(ctx context.Context, image string) error) ScanOption {
	return func(s *Scanner) error { s.repair = fn; return nil }
}

// WithScanClock sets the clock that stamps the report's start and end.
func WithScanClock(now func() time.Time) ScanOption {
	return func(s *Scanner) error {
		if now == nil {
			return errors.New("jobs: nil scan clock")
		}
		s.now = now
		return nil
	}
}

// NewScanner returns a scan of st for the registries and connectors regs.
// src returns a connector by name (normally (*cache.Cache).Source). An
// invalid option makes Run fail.
func NewScanner(regs Registries, st store.Store, src func(name string) (connector.Source, bool), log *slog.Logger, opts ...ScanOption) *Scanner {
	if src == nil {
		src = func(string) (connector.Source, bool) { return nil, false }
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scanner{regs: regs, store: st, src: src, log: log,
		concurrency: DefaultScanConcurrency, now: time.Now, maxRetryWait: scanMaxRetryWait}
	for _, o := range opts {
		if err := o(s); err != nil && s.err == nil {
			s.err = err
		}
	}
	return s
}

// Run scans the store and returns the report (Job JobDanglingScan). Its
// problems are sorted by registry, repository, manifest and missing digest.
// Upstream failures are findings, not errors; Run fails only when the store
// cannot be read, an option was invalid, or ctx ends.
func (s *Scanner) Run(ctx context.Context) (*Report, error) {
	if s.err != nil {
		return nil, s.err
	}
	rep := newReport(JobDanglingScan, s.now().UTC(), s.regs)
	run := &scanRun{s: s, rep: rep}
	// A failing walk cancels the lookups in flight; a failing lookup task
	// cancels the walk (errgroup).
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(wctx)
	g.SetLimit(s.concurrency)
	skipped := ""
	werr := s.store.Repositories(gctx, "", func(repo store.Repo) error {
		reg, ok := s.regs.Registry(repo.Registry)
		if !ok {
			if skipped != repo.Registry {
				skipped = repo.Registry
				s.log.Info("scan skips a registry that is not configured", "job", JobDanglingScan, "registry", repo.Registry)
			}
			return nil
		}
		return run.scanRepo(gctx, g, reg, repo)
	})
	if werr != nil {
		cancel()
	}
	gerr := g.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// A task's error is the cause when the walk only saw the cancellation.
	if err := cmp.Or(gerr, werr); err != nil {
		return nil, fmt.Errorf("dangling scan: %w", err)
	}
	slices.SortFunc(rep.Problems, compareScanProblems)
	rep.Finished = s.now().UTC()
	sm := rep.Summary
	s.log.Debug("scan finished", "job", JobDanglingScan, "manifests", sm.Manifests, "references", sm.References,
		"remote_only", sm.RemoteOnly, "problems", sm.Problems, "upstream_errors", sm.UpstreamErrors)
	return rep, nil
}

func compareScanProblems(a, b Problem) int {
	return cmp.Or(strings.Compare(a.Registry, b.Registry), strings.Compare(a.Repository, b.Repository),
		strings.Compare(a.Manifest, b.Manifest), strings.Compare(a.Missing, b.Missing), strings.Compare(a.Reason, b.Reason))
}

// scanRun is the state of one Run shared by its repositories.
type scanRun struct {
	s   *Scanner
	mu  sync.Mutex // guards rep
	rep *Report
}

// scanKind says how a reference is checked: a blob, or a manifest (an index
// child or a subject).
type scanKind uint8

const (
	scanKindBlob scanKind = iota
	scanKindManifest
)

// scanRef is a reference checked in a repository.
type scanRef struct {
	kind scanKind
	d    digest.Digest
}

// scanLookupKey identifies one upstream lookup in a repository: a reference
// asked of an ordered list of connectors.
type scanLookupKey struct {
	scanRef
	connectors string // names joined with ","
}

// scanLookup is a reference absent locally, asked upstream once per repository
// however many manifests share it. Its result is written by one task and
// read after every task of the repository finished.
type scanLookup struct {
	key   scanLookupKey
	names []string
	found bool
	// When not found: a nil err means every connector said "not found";
	// otherwise connector is the one that failed with err.
	connector string
	err       error
}

// scanMissing is a reference of a manifest that the store lacks.
type scanMissing struct {
	kind scanKind
	desc ocispec.Descriptor
	look *scanLookup // nil when the outcome is known without asking
	// reason and connector of a problem known without asking.
	reason    string
	connector string
}

// scanPending is a manifest with at least one reference missing locally.
type scanPending struct {
	digest  digest.Digest
	missing []scanMissing
	tooMany *scanTooMany // set instead of missing when it has too many
}

// scanTooMany is a manifest whose references were not asked upstream
// because there are too many of them (ReasonTooManyReferences).
type scanTooMany struct {
	connector string
	detail    string
}

// scanRepoState is the state of one repository. The walking goroutine fills it;
// lookup tasks write only their own lookup; whichever finishes last (the
// walker when there is nothing to look up) settles the repository.
type scanRepoState struct {
	run     *scanRun
	reg     *config.Registry
	repo    store.Repo
	present map[scanRef]bool
	pending []*scanPending
	lookups map[scanLookupKey]*scanLookup
	heads   scanHeadMemo

	manifests, references, local int
	unchecked                    int // missing references not asked: too many
	remaining                    atomic.Int64
}

// scanRepo checks every manifest of repo locally, then starts the upstream
// lookups of what is missing; the last of them settles the repository.
func (r *scanRun) scanRepo(ctx context.Context, g *errgroup.Group, reg *config.Registry, repo store.Repo) error {
	rs := &scanRepoState{run: r, reg: reg, repo: repo, present: map[scanRef]bool{}, lookups: map[scanLookupKey]*scanLookup{}}
	err := r.s.store.Manifests(ctx, repo, func(d digest.Digest) error { return rs.scanManifest(ctx, d) })
	if err != nil {
		return err
	}
	if len(rs.lookups) == 0 {
		return rs.settle(ctx)
	}
	rs.remaining.Store(int64(len(rs.lookups)))
	for _, l := range rs.lookups {
		g.Go(func() error {
			if err := rs.resolve(ctx, l); err != nil {
				return err
			}
			if rs.remaining.Add(-1) == 0 {
				return rs.settle(ctx)
			}
			return nil
		})
	}
	return nil
}

// scanManifest checks the references of manifest d.
func (rs *scanRepoState) scanManifest(ctx context.Context, d digest.Digest) error {
	log := rs.run.s.log
	m, err := rs.run.s.store.Manifest(ctx, rs.repo, d)
	rs.notePresence(scanRef{scanKindManifest, d}, err) // spares isPresent reading it again
	switch {
	case errors.Is(err, store.ErrManifestUnknown):
		// Deleted since it was listed, or its content is gone: the latter
		// is the verify job's finding, noted here too.
		if _, herr := rs.run.s.store.HasBlob(ctx, d); errors.Is(herr, store.ErrBlobUnknown) {
			log.Warn("scan skips a manifest whose content is missing", "job", JobDanglingScan, "registry", rs.repo.Registry,
				"repo", rs.repo.Name, "digest", d)
		}
		return nil
	case errors.Is(err, store.ErrDigestMismatch):
		// Corruption is the verify job's finding, not a dangling reference.
		log.Warn("scan skips a corrupt manifest", "job", JobDanglingScan, "registry", rs.repo.Registry, "repo", rs.repo.Name, "digest", d)
		return nil
	case err != nil:
		return err
	}
	p, err := manifest.Parse(m.MediaType, m.Data)
	if errors.Is(err, manifest.ErrTooManyReferences) {
		// Not one reference of it is checked: reported, not skipped.
		rs.manifests++
		rs.pending = append(rs.pending, &scanPending{digest: d, tooMany: &scanTooMany{connector: m.Source, detail: err.Error()}})
		return nil
	}
	if err != nil {
		log.Warn("scan skips a manifest it cannot parse", "job", JobDanglingScan, "registry", rs.repo.Registry, "repo", rs.repo.Name,
			"digest", d, "error", err)
		return nil
	}
	rs.manifests++
	var missing []scanMissing
	seen := make(map[digest.Digest]bool, len(p.Layers)+2)
	for kind, desc := range scanReferences(p) {
		if seen[desc.Digest] {
			continue // listed twice in this manifest: checked once
		}
		seen[desc.Digest] = true
		rs.references++
		ok, err := rs.isPresent(ctx, scanRef{kind, desc.Digest})
		if err != nil {
			return err
		}
		if ok {
			rs.local++
			continue
		}
		missing = append(missing, scanMissing{kind: kind, desc: desc})
	}
	if len(missing) == 0 {
		return nil
	}
	pm := &scanPending{digest: d}
	rs.pending = append(rs.pending, pm)
	if names, limit := rs.limit(m.Source); len(missing) > limit {
		// Bounded upstream work: none of them is asked.
		rs.unchecked += len(missing)
		pm.tooMany = &scanTooMany{connector: strings.Join(names, ","), detail: fmt.Sprintf(
			"%d references missing locally, more than max_manifest_entries (%d) of connector %s; none asked upstream",
			len(missing), limit, strings.Join(names, ","))}
		return nil
	}
	for _, mr := range missing {
		pm.missing = append(pm.missing, rs.plan(mr.kind, mr.desc, m.Source))
	}
	return nil
}

// limit is manifestLimit for a manifest of the repository from source.
func (rs *scanRepoState) limit(source string) ([]string, int) {
	return manifestLimit(rs.run.s.regs, rs.reg, source)
}

// references yields what a manifest depends on and how each is checked:
// the children of an index as manifests, the config and layers of an image
// as blobs (non-distributable layers left out), and the subject as a
// manifest.
func scanReferences(p *manifest.Manifest) iter.Seq2[scanKind, ocispec.Descriptor] {
	return func(yield func(scanKind, ocispec.Descriptor) bool) {
		kind := scanKindBlob
		if manifest.IsIndex(p.MediaType) {
			kind = scanKindManifest
		}
		for _, desc := range p.Required() {
			if !yield(kind, desc) {
				return
			}
		}
		if p.Subject != nil {
			yield(scanKindManifest, *p.Subject)
		}
	}
}

// isPresent reports whether the store has a reference in the repository;
// the answer is remembered for the repository's other manifests.
func (rs *scanRepoState) isPresent(ctx context.Context, p scanRef) (bool, error) {
	if ok, known := rs.present[p]; known {
		return ok, nil
	}
	var err error
	if p.kind == scanKindManifest {
		_, err = rs.run.s.store.Manifest(ctx, rs.repo, p.d)
	} else {
		_, err = rs.run.s.store.StatBlob(ctx, rs.repo, p.d)
	}
	if !rs.notePresence(p, err) {
		return false, fmt.Errorf("check %s in %s: %w", p.d, rs.repo, err)
	}
	return rs.present[p], nil
}

// notePresence remembers what a store lookup of p answered: present, or
// absent (unknown, or content that does not match its digest). It reports
// false, remembering nothing, for any other error.
func (rs *scanRepoState) notePresence(p scanRef, err error) bool {
	switch {
	case err == nil:
		rs.present[p] = true
	case errors.Is(err, store.ErrBlobUnknown), errors.Is(err, store.ErrManifestUnknown), errors.Is(err, store.ErrDigestMismatch):
		rs.present[p] = false
	default:
		return false
	}
	return true
}

// plan decides how a reference missing locally is settled: known at once
// (no connector, or the providing connector was removed), or by a lookup
// through the providing connector, or through the registry's connectors in
// order when the manifest was pushed.
func (rs *scanRepoState) plan(kind scanKind, desc ocispec.Descriptor, source string) scanMissing {
	mr := scanMissing{desc: ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest}}
	names := rs.reg.Connectors
	if source != "" {
		_, defined := rs.run.s.regs.Connector(source)
		if !defined || !slices.Contains(rs.reg.Connectors, source) {
			mr.reason, mr.connector = ReasonConnectorRemoved, source
			return mr
		}
		names = []string{source}
	}
	if len(names) == 0 {
		mr.reason = ReasonMissing
		return mr
	}
	key := scanLookupKey{scanRef{kind, desc.Digest}, strings.Join(names, ",")}
	l := rs.lookups[key]
	if l == nil {
		l = &scanLookup{key: key, names: names}
		rs.lookups[key] = l
	}
	mr.look = l
	return mr
}

// resolve asks l's connectors in order until one has the reference. It
// fails only when ctx ends.
func (rs *scanRepoState) resolve(ctx context.Context, l *scanLookup) error {
	for _, name := range l.names {
		if err := ctx.Err(); err != nil {
			return err
		}
		found, err := rs.heads.do(ctx, scanHeadKey{name, l.key.scanRef}, func() (bool, error) {
			return rs.head(ctx, name, l.key.scanRef)
		})
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if found {
			l.found, l.connector, l.err = true, name, nil
			return nil
		}
		if err != nil && l.err == nil {
			l.connector, l.err = name, err // the first failure is reported
		}
	}
	if l.err == nil {
		l.connector = l.key.connectors
	}
	return nil
}

// head asks one connector whether it has a reference: (true, nil) when it
// does, (false, nil) when it says it does not, an error when it cannot
// tell. A rate-limited answer with a Retry-After is waited out once (up to
// scanMaxRetryWait) and asked again.
func (rs *scanRepoState) head(ctx context.Context, name string, p scanRef) (bool, error) {
	src, ok := rs.run.s.src(name)
	if !ok {
		return false, fmt.Errorf("connector %s: %w", name, errScanNoSource)
	}
	for attempt := 0; ; attempt++ {
		var err error
		if p.kind == scanKindManifest {
			_, err = src.HeadManifest(ctx, rs.repo.Name, p.d.String())
		} else {
			_, err = src.HeadBlob(ctx, rs.repo.Name, p.d)
		}
		if err == nil {
			return true, nil
		}
		if connector.IsNotFound(err) {
			return false, nil
		}
		var ce *connector.Error
		if attempt > 0 || !errors.As(err, &ce) || ce.RetryAfter <= 0 || ce.RetryAfter > rs.run.s.maxRetryWait {
			return false, err
		}
		t := time.NewTimer(ce.RetryAfter)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		}
	}
}

// settle turns the repository's results into problems, queues repairs and
// adds everything to the report.
func (rs *scanRepoState) settle(ctx context.Context) error {
	s := rs.run.s
	var (
		problems                    []Problem
		remoteOnly, dangling, upErr int
		repairs                     []digest.Digest
		tags                        map[digest.Digest][]string
	)
	// tagsOf sets a problem's tags, reading the repository's once.
	tagsOf := func(p *Problem, d digest.Digest) error {
		if tags == nil {
			var err error
			if tags, err = rs.tags(ctx); err != nil {
				return err
			}
		}
		p.Tags = tags[d]
		return nil
	}
	for _, pm := range rs.pending {
		if pm.tooMany != nil {
			p := Problem{Registry: rs.repo.Registry, Repository: rs.repo.Name, Manifest: pm.digest.String(),
				Connector: pm.tooMany.connector, Reason: ReasonTooManyReferences, Detail: pm.tooMany.detail}
			if err := tagsOf(&p, pm.digest); err != nil {
				return err
			}
			problems = append(problems, p)
			continue
		}
		remote, bad := 0, false
		for _, mr := range pm.missing {
			p := Problem{Registry: rs.repo.Registry, Repository: rs.repo.Name, Manifest: pm.digest.String(),
				Missing: mr.desc.Digest.String(), MediaType: mr.desc.MediaType, Connector: mr.connector, Reason: mr.reason}
			if l := mr.look; l != nil {
				switch {
				case l.found:
					remote++
					continue
				case l.err != nil:
					p.Reason, p.Connector, p.Detail = ReasonUpstreamError, l.connector, ErrorText(l.err)
				default:
					p.Reason, p.Connector = ReasonMissing, l.connector
				}
			}
			if p.Reason == ReasonUpstreamError {
				upErr++
			} else {
				dangling++
				bad = true
			}
			if err := tagsOf(&p, pm.digest); err != nil {
				return err
			}
			problems = append(problems, p)
		}
		remoteOnly += remote
		if remote > 0 && !bad {
			repairs = append(repairs, pm.digest)
		}
	}
	queued := 0
	if s.repair != nil {
		for _, d := range repairs {
			image := rs.repo.String() + "@" + d.String()
			if err := s.repair(ctx, image); err != nil {
				if cerr := ctx.Err(); cerr != nil {
					return cerr
				}
				s.log.Warn("scan could not queue a repair", "job", JobDanglingScan, "registry", rs.repo.Registry, "repo", rs.repo.Name,
					"digest", d, "error", err)
				continue
			}
			queued++
		}
	}
	r := rs.run
	r.mu.Lock()
	defer r.mu.Unlock()
	sm := &r.rep.Summary
	sm.Manifests += rs.manifests
	sm.References += rs.references
	sm.Local += rs.local
	sm.RemoteOnly += remoteOnly
	sm.Problems += dangling
	sm.ByRegistry[rs.repo.Registry] += dangling
	sm.UpstreamErrors += upErr
	sm.Unchecked += rs.unchecked
	sm.RepairsQueued += queued
	r.rep.Problems = append(r.rep.Problems, problems...)
	return nil
}

// tags maps each tagged manifest of the repository to its tags, sorted.
func (rs *scanRepoState) tags(ctx context.Context) (map[digest.Digest][]string, error) {
	st := rs.run.s.store
	names, err := st.Tags(ctx, rs.repo)
	if err != nil {
		return nil, fmt.Errorf("tags of %s: %w", rs.repo, err)
	}
	out := make(map[digest.Digest][]string, len(names))
	for _, t := range names { // lexical order, so each list is sorted
		ti, err := st.Tag(ctx, rs.repo, t)
		if errors.Is(err, store.ErrTagUnknown) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("tag %s of %s: %w", t, rs.repo, err)
		}
		out[ti.Digest] = append(out[ti.Digest], t)
	}
	return out, nil
}

// scanHeadKey is one HEAD request: a connector and a reference.
type scanHeadKey struct {
	connector string
	scanRef
}

// scanHeadMemo makes each HEAD of a repository happen once however many
// lookups need it; concurrent askers wait for the first one's answer.
type scanHeadMemo struct {
	mu    sync.Mutex
	calls map[scanHeadKey]*scanHeadCall
}

type scanHeadCall struct {
	done  chan struct{}
	found bool
	err   error
}

// do returns the answer for k, calling fn unless another caller did.
func (m *scanHeadMemo) do(ctx context.Context, k scanHeadKey, fn func() (bool, error)) (bool, error) {
	m.mu.Lock()
	if m.calls == nil {
		m.calls = map[scanHeadKey]*scanHeadCall{}
	}
	c, ok := m.calls[k]
	if !ok {
		c = &scanHeadCall{done: make(chan struct{})}
		m.calls[k] = c
	}
	m.mu.Unlock()
	if !ok {
		c.found, c.err = fn()
		close(c.done)
		return c.found, c.err
	}
	select {
	case <-c.done:
		return c.found, c.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}
