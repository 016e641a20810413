package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/regwarm/regwarm/internal/connector"
	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
)

// verifyFetch brings content d of repo into the store through the registry's
// connectors (a wrapper around cache.Fetch for blobs, cache.Manifest for
// manifests).
type verifyFetch func(ctx context.Context, repo store.Repo, d digest.Digest) error

// verifyBurst is the rate limiter's burst, and the size of each hashing
// read: a limited verification reads at most this much ahead of its rate.
const verifyBurst = 1 << 20

// Verifier is the integrity check behind `regwarm verify`: it re-hashes
// everything in the store and checks that every manifest's references are
// present.
//
// A run makes two passes. The reference pass reads every manifest of every
// repository (the store re-hashes manifests as it reads them), records
// each digest they reference, with the first repository and manifest that
// reference it, and reports references whose content is absent. The
// content pass streams every stored blob through its hash, rate limited;
// content that does not match its digest is quarantined when the store
// can (store.Quarantiner) and, when a manifest references it, fetched
// again through the referencing repository's connectors and re-verified.
// Blobs no manifest references are listed as unreferenced.
//
// Verification deletes nothing. Removing unreferenced blobs is garbage
// collection, a separate job: it must never remove a blob that a manifest
// references, nor one an upload in progress is about to reference (a
// pushed blob is unreferenced until its manifest follows; upload sessions
// themselves live in uploads/, not among the blobs), so it needs a grace
// period and a fresh reference pass of its own rather than this report.
//
// Memory grows with the number of distinct referenced digests (about a
// hundred bytes each), never with content: blobs are streamed and each
// manifest is dropped once its references are recorded.
type Verifier struct {
	regs          Registries
	store         store.Store
	fetchBlob     verifyFetch
	fetchManifest verifyFetch
	log           *slog.Logger
	now           func() time.Time
	bytesPerSec   int64
	upstream      UpstreamCheck // nil: absent content is not looked up
	repair        bool          // fetch absent content that upstream has
}

// UpstreamCheck reports whether content d (a manifest when isManifest) of
// repo is available from the registry's connectors: true, or false with a
// nil error when none has it, or the error that kept it from telling.
type UpstreamCheck func(ctx context.Context, repo store.Repo, d digest.Digest, isManifest bool) (bool, error)

// ConnectorCheck is the UpstreamCheck of the connectors of regs (src finds one by
// name, like cache.Source): content is available when a connector of the
// repository's registry answers a HEAD for it, in order; a 404 from all is
// false; another failure is returned when no connector has it.
func ConnectorCheck(regs Registries, src func(name string) (connector.Source, bool)) UpstreamCheck {
	return func(ctx context.Context, repo store.Repo, d digest.Digest, isManifest bool) (bool, error) {
		reg, ok := regs.Registry(repo.Registry)
		if !ok {
			return false, nil
		}
		var firstErr error
		for _, name := range reg.Connectors {
			s, ok := src(name)
			if !ok {
				continue
			}
			var err error
			if isManifest {
				_, err = s.HeadManifest(ctx, repo.Name, d.String())
			} else {
				_, err = s.HeadBlob(ctx, repo.Name, d)
			}
			switch {
			case err == nil:
				return true, nil
			case !connector.IsNotFound(err) && firstErr == nil:
				firstErr = fmt.Errorf("connector %s: %w", name, err)
			}
		}
		return false, firstErr
	}
}

// WithUpstreamCheck makes verify ask upstream about referenced content the
// store lacks: what a connector still has is counted remote_only, as the
// dangling scan counts it, and is not a problem; what no connector has is
// reported absent; an upstream that cannot tell is listed as
// upstream-error and not counted.
func WithUpstreamCheck(fn UpstreamCheck) VerifyOption {
	return func(v *Verifier) { v.upstream = fn }
}

// WithRepairAbsent makes verify fetch the remote_only content (through the
// blob or manifest fetcher) so that it is local again, like the dangling
// scan's repair (jobs.verify.repair; off by default). It needs
// WithUpstreamCheck.
func WithRepairAbsent(on bool) VerifyOption {
	return func(v *Verifier) { v.repair = on }
}

// VerifyOption configures a Verifier.
type VerifyOption func(*Verifier)

// WithBytesPerSecond limits how fast content is read for hashing; 0 (or a
// negative value, the default) means no limit
// (jobs.verify.max_bytes_per_second). The limit applies to the
// content pass, which reads every byte of the store; the reference pass
// reads manifests (small, and hashed again by the content pass) unlimited.
func WithBytesPerSecond(n int64) VerifyOption {
	return func(v *Verifier) { v.bytesPerSec = max(n, 0) }
}

// WithVerifyClock sets the clock that stamps the report; nil keeps
// time.Now.
func WithVerifyClock(now func() time.Time) VerifyOption {
	return func(v *Verifier) {
		if now != nil {
			v.now = now
		}
	}
}

// WithManifestFetch sets how a corrupt manifest is fetched again (a
// wrapper around cache.Manifest); nil means manifests are not re-fetched.
func WithManifestFetch(fetch func(ctx context.Context, repo store.Repo, d digest.Digest) error) VerifyOption {
	return func(v *Verifier) { v.fetchManifest = fetch }
}

// NewVerifier returns a Verifier of st. fetch brings a corrupt blob again
// from upstream (a wrapper around cache.Fetch); nil means blobs are not
// re-fetched. regs names the registries the report counts; regs and log
// may be nil.
func NewVerifier(regs Registries, st store.Store, fetch func(ctx context.Context, repo store.Repo, d digest.Digest) error, log *slog.Logger, opts ...VerifyOption) *Verifier {
	v := &Verifier{regs: regs, store: st, fetchBlob: fetch, log: log, now: time.Now}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	for _, o := range opts {
		o(v)
	}
	return v
}

// Run verifies the whole store and returns the report (Job JobVerify).
//
// Summary.Problems counts damage only, Corrupt + Absent: what makes
// `regwarm verify` exit 1. Unreferenced blobs are garbage, not damage; they
// are listed in Problems (reason ReasonUnreferenced, with their size) so a
// report shows what a garbage collection would reclaim, but they are not
// counted in Summary.Problems. A corrupt blob is listed once, as corrupt,
// even when it is unreferenced too; a repaired one stays listed for this
// run, its Detail saying so.
//
// Problems come in a stable order: those of the reference pass by
// repository and manifest, then those of the content pass by digest. Run
// stops with ctx's error, even in the middle of hashing a blob.
func (v *Verifier) Run(ctx context.Context) (*Report, error) {
	content, ok := v.store.(store.ContentReader)
	if !ok {
		return nil, fmt.Errorf("verify: store %T cannot read content by digest", v.store)
	}
	r := &verifyRun{
		v:       v,
		content: content,
		refs:    map[digest.Digest]verifyRef{},
		remote:  map[digest.Digest]verifyRemote{},
		damaged: map[digest.Digest]bool{},
		buf:     make([]byte, verifyBurst),
		report:  newReport(JobVerify, v.now(), v.regs),
	}
	if v.bytesPerSec > 0 {
		r.limiter = rate.NewLimiter(rate.Limit(v.bytesPerSec), int(min(v.bytesPerSec, verifyBurst)))
	}
	v.log.Info("verify started", "job", JobVerify, "max_bytes_per_second", v.bytesPerSec)
	if err := r.references(ctx); err != nil {
		return nil, err
	}
	if err := r.contents(ctx); err != nil {
		return nil, err
	}
	s := &r.report.Summary
	s.Problems = s.Corrupt + s.Absent
	r.report.Finished = v.now()
	v.log.Info("verify finished", "job", JobVerify, "blobs", s.Blobs, "bytes", s.Bytes, "manifests", s.Manifests,
		"corrupt", s.Corrupt, "quarantined", s.Quarantined, "refetched", s.Refetched, "absent", s.Absent,
		"remote_only", s.RemoteOnly, "repaired", s.Repaired, "upstream_errors", s.UpstreamErrors,
		"unreferenced", s.Unreferenced, "unreferenced_bytes", s.UnreferencedBytes)
	return r.report, nil
}

// verifyPresence is what the reference pass learnt about a digest's content.
type verifyPresence uint8

const (
	verifyUnknown verifyPresence = iota
	verifyPresent
	verifyAbsent
)

// verifyRef is the reference pass's record of one digest.
type verifyRef struct {
	repo     int32         // index in verifyRun.repos: the first repository referencing it
	manifest digest.Digest // the first manifest referencing it (itself, for a manifest met in its repository)
	isManif  bool          // seen as a manifest: re-fetch through the manifest fetcher
	presence verifyPresence
}

// verifyRun is the state of one Run.
type verifyRun struct {
	v       *Verifier
	content store.ContentReader
	limiter *rate.Limiter // nil: unlimited
	buf     []byte
	report  *Report

	repos []store.Repo                // every repository, in walk order
	refs  map[digest.Digest]verifyRef // every referenced digest
	// damaged holds digests already reported as corrupt, so that neither
	// pass lists them twice.
	damaged map[digest.Digest]bool
	// remote holds what upstream said about absent content, asked once
	// per digest.
	remote map[digest.Digest]verifyRemote
}

// verifyRemote is the upstream's answer about one absent digest.
type verifyRemote struct {
	found bool
	err   error
}

// references is the first pass: every manifest of every repository.
func (r *verifyRun) references(ctx context.Context) error {
	return r.v.store.Repositories(ctx, "", func(repo store.Repo) error {
		idx := int32(len(r.repos))
		r.repos = append(r.repos, repo)
		err := r.v.store.Manifests(ctx, repo, func(d digest.Digest) error {
			return r.manifest(ctx, idx, d)
		})
		if err != nil {
			return fmt.Errorf("verify %s: %w", repo, err)
		}
		return nil
	})
}

// manifest reads manifest d of repository idx, verified by the store, and
// records its references.
func (r *verifyRun) manifest(ctx context.Context, idx int32, d digest.Digest) error {
	repo := r.repos[idx]
	r.report.Summary.Manifests++
	e := r.note(d, idx, d, true)
	m, err := r.v.store.Manifest(ctx, repo, d)
	switch {
	case err == nil:
	case r.damaged[d] && (errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrManifestUnknown)):
		return nil // reported from another repository
	case errors.Is(err, store.ErrDigestMismatch):
		size, herr := r.v.store.HasBlob(ctx, d)
		if herr != nil && !errors.Is(herr, store.ErrBlobUnknown) {
			return herr
		}
		repaired, err := r.corrupt(ctx, d, size)
		if err != nil || !repaired {
			return err
		}
		if m, err = r.v.store.Manifest(ctx, repo, d); err != nil {
			return fmt.Errorf("read re-fetched manifest %s: %w", d, err)
		}
	case errors.Is(err, store.ErrManifestUnknown):
		// Linked without content, or deleted since it was listed (its
		// content stays: nothing to report).
		_, herr := r.v.store.HasBlob(ctx, d)
		switch {
		case herr == nil:
			return nil
		case !errors.Is(herr, store.ErrBlobUnknown):
			return herr
		}
		e.presence = verifyAbsent
		r.refs[d] = e
		return r.absent(ctx, repo, d, d, "", true)
	default:
		return err
	}
	e.presence = verifyPresent
	r.refs[d] = e

	pm, err := manifest.Parse(m.MediaType, m.Data)
	if err != nil {
		// Intact bytes the parser rejects are not damage this job can
		// name; what they reference will show as unreferenced.
		r.v.log.Warn("stored manifest does not parse", "job", JobVerify, "registry", repo.Registry,
			"repo", repo.Name, "digest", d, "error", err)
		return nil
	}
	for _, desc := range pm.References() {
		if manifest.NonDistributable(desc) {
			continue
		}
		ce := r.note(desc.Digest, idx, d, manifest.IsKnown(desc.MediaType))
		if ce.presence == verifyUnknown {
			ce.presence = verifyPresent
			if _, err := r.v.store.HasBlob(ctx, desc.Digest); errors.Is(err, store.ErrBlobUnknown) {
				ce.presence = verifyAbsent
			} else if err != nil {
				return err
			}
			r.refs[desc.Digest] = ce
		}
		if ce.presence == verifyAbsent && !r.damaged[desc.Digest] {
			if err := r.absent(ctx, repo, d, desc.Digest, desc.MediaType, manifest.IsKnown(desc.MediaType)); err != nil {
				return err
			}
		}
	}
	return nil
}

// note records that manifest m of repository idx references d (m == d for
// a manifest met in its own repository) and returns d's entry. The first
// reference wins; a later one can only mark d as a manifest.
func (r *verifyRun) note(d digest.Digest, idx int32, m digest.Digest, isManifest bool) verifyRef {
	e, ok := r.refs[d]
	if !ok || (isManifest && !e.isManif) {
		if !ok {
			e = verifyRef{repo: idx, manifest: m}
		}
		e.isManif = e.isManif || isManifest
		r.refs[d] = e
	}
	return e
}

// absent handles manifest m of repo referencing content missing here: with
// an upstream check, content a connector has counts remote_only (and is
// fetched when repairing); the rest is reported absent.
func (r *verifyRun) absent(ctx context.Context, repo store.Repo, m, missing digest.Digest, mediaType string, isManifest bool) error {
	p := Problem{Registry: repo.Registry, Repository: repo.Name,
		Manifest: m.String(), Missing: missing.String(), MediaType: mediaType, Reason: ReasonAbsent}
	if r.v.upstream != nil {
		st, asked := r.remote[missing]
		if !asked {
			st.found, st.err = r.v.upstream(ctx, repo, missing, isManifest)
			if err := ctx.Err(); err != nil {
				return err
			}
			if st.found && r.v.repair {
				r.fetchAbsent(ctx, repo, missing, isManifest)
			}
			r.remote[missing] = st
		}
		switch {
		case st.found:
			r.report.Summary.RemoteOnly++
			return nil
		case st.err != nil:
			r.report.Summary.UpstreamErrors++
			p.Reason, p.Detail = ReasonUpstreamError, ErrorText(st.err)
			r.report.Problems = append(r.report.Problems, p)
			return nil
		}
	}
	r.report.Summary.Absent++
	r.report.Summary.ByRegistry[repo.Registry]++
	r.report.Problems = append(r.report.Problems, p)
	return nil
}

// fetchAbsent brings absent content d of repo from upstream, for repair.
// A failure is logged: the content stays remote_only.
func (r *verifyRun) fetchAbsent(ctx context.Context, repo store.Repo, d digest.Digest, isManifest bool) {
	fetch := r.v.fetchBlob
	if isManifest {
		fetch = r.v.fetchManifest
	}
	if fetch == nil {
		return
	}
	if err := fetch(ctx, repo, d); err != nil {
		r.v.log.Warn("verify could not fetch absent content", "job", JobVerify, "registry", repo.Registry,
			"repo", repo.Name, "digest", d, "error", err)
		return
	}
	r.report.Summary.Repaired++
}

// contents is the second pass: every stored blob, manifests included.
func (r *verifyRun) contents(ctx context.Context) error {
	return r.v.store.Blobs(ctx, func(d digest.Digest, _ int64) error {
		n, ok, err := r.hash(ctx, d)
		if errors.Is(err, store.ErrBlobUnknown) {
			return nil // removed since it was listed
		}
		if err != nil {
			return err
		}
		s := &r.report.Summary
		s.Blobs++
		s.Bytes += n
		if !ok {
			if r.damaged[d] {
				return nil // a manifest reported by the reference pass, left in place
			}
			repaired, err := r.corrupt(ctx, d, n)
			if err != nil || !repaired || r.damaged[d] {
				return err
			}
			// Intact on the store's re-check: an ordinary blob after all.
		}
		if _, referenced := r.refs[d]; !referenced {
			s.Unreferenced++
			s.UnreferencedBytes += n
			r.report.Problems = append(r.report.Problems, Problem{Reason: ReasonUnreferenced, Digest: d.String(), Size: n})
		}
		return nil
	})
}

// corrupt handles content d (of size bytes) that does not hash to d: it
// quarantines it and, when a manifest references it, fetches it again and
// re-verifies it, then lists the problem. repaired reports whether good
// content is in place again. Content that hashes correctly when the store
// re-checks it before quarantine was changed under the run; it is intact
// and not reported.
func (r *verifyRun) corrupt(ctx context.Context, d digest.Digest, size int64) (repaired bool, err error) {
	e, referenced := r.refs[d]
	p := Problem{Reason: ReasonCorrupt, Digest: d.String(), Size: size}
	var repo store.Repo
	if referenced {
		repo = r.repos[e.repo]
		p.Registry, p.Repository, p.Manifest = repo.Registry, repo.Name, e.manifest.String()
	}
	q, ok := r.v.store.(store.Quarantiner)
	if !ok {
		r.addCorrupt(p, "not quarantined: the store cannot quarantine")
		return false, nil
	}
	path, err := q.Quarantine(ctx, d)
	switch {
	case errors.Is(err, store.ErrBlobUnknown):
		r.addCorrupt(p, "removed before it could be quarantined")
		return false, nil
	case err != nil:
		return false, err
	case path == "":
		r.v.log.Info("content intact on re-check", "job", JobVerify, "digest", d)
		return true, nil
	}
	r.report.Summary.Quarantined++
	detail := []string{"quarantined to " + path}
	fetch := r.v.fetchBlob
	if e.isManif {
		fetch = r.v.fetchManifest
	}
	switch {
	case !referenced:
		detail = append(detail, "not referenced by any manifest")
	case fetch == nil:
	default:
		repaired, err = r.refetch(ctx, fetch, repo, d)
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			detail = append(detail, "re-fetch failed: "+err.Error())
		} else {
			r.report.Summary.Refetched++
			detail = append(detail, "re-fetched from upstream")
		}
	}
	r.addCorrupt(p, strings.Join(detail, "; "))
	return repaired, nil
}

// refetch fetches d of repo again and verifies what arrived.
func (r *verifyRun) refetch(ctx context.Context, fetch verifyFetch, repo store.Repo, d digest.Digest) (bool, error) {
	if err := fetch(ctx, repo, d); err != nil {
		return false, err
	}
	_, ok, err := r.hash(ctx, d)
	if err != nil {
		return false, fmt.Errorf("re-verify: %w", err)
	}
	if !ok {
		return false, errors.New("re-fetched content does not match its digest either")
	}
	return true, nil
}

// addCorrupt lists a corrupt-content problem and logs it.
func (r *verifyRun) addCorrupt(p Problem, detail string) {
	p.Detail = detail
	r.damaged[digest.Digest(p.Digest)] = true
	r.report.Summary.Corrupt++
	if p.Registry != "" {
		r.report.Summary.ByRegistry[p.Registry]++
	}
	r.report.Problems = append(r.report.Problems, p)
	r.v.log.Warn("corrupt content", "job", JobVerify, "digest", p.Digest, "registry", p.Registry,
		"repo", p.Repository, "detail", detail)
}

// hash streams the stored content of d through its hash, rate limited, and
// returns its length and whether it matches d.
func (r *verifyRun) hash(ctx context.Context, d digest.Digest) (int64, bool, error) {
	b, err := r.content.OpenContent(ctx, d)
	if err != nil {
		return 0, false, err
	}
	defer b.Close()
	h := d.Algorithm().Hash()
	n, err := io.CopyBuffer(h, verifyThrottle(ctx, b, r.limiter), r.buf)
	if err != nil {
		return n, false, fmt.Errorf("hash %s: %w", d, err)
	}
	return n, digest.NewDigest(d.Algorithm(), h) == d, nil
}

// verifyThrottle returns a reader of r that reads at most as fast as limiter
// allows (without limit when it is nil) and fails with ctx's error once ctx
// is done.
func verifyThrottle(ctx context.Context, r io.Reader, limiter *rate.Limiter) io.Reader {
	return verifyReader(func(p []byte) (int, error) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if limiter != nil && len(p) > limiter.Burst() {
			p = p[:limiter.Burst()]
		}
		n, err := r.Read(p)
		if limiter != nil && n > 0 {
			if werr := limiter.WaitN(ctx, n); werr != nil {
				if cerr := ctx.Err(); cerr != nil {
					return n, cerr
				}
				return n, werr
			}
		}
		return n, err
	})
}

// verifyReader adapts a function to io.Reader.
type verifyReader func(p []byte) (int, error)

func (f verifyReader) Read(p []byte) (int, error) { return f(p) }
