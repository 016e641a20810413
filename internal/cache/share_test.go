package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/cache/fill"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/internal/upstreamtest"
)

// shareConfig has a private registry that accepts pushes and a cache
// registry whose connector is the fixture's upstream.
const shareConfig = `
registries:
  - {name: private, push: true}
  - {name: hub, default: true, connectors: [up], tag_ttl: 1m}
connectors:
  - {name: up, url: "UP"}
`

// chainConfig is shareConfig plus a registry reading hub through a local
// connector.
const chainConfig = `
registries:
  - {name: private, push: true}
  - {name: hub, default: true, connectors: [up], tag_ttl: 1m}
  - {name: release, connectors: [hubc]}
connectors:
  - {name: up, url: "UP"}
  - {name: hubc, registry: hub}
`

var private = func(name string) store.Repo { return store.Repo{Registry: "private", Name: name} }

// pushPrivate stores data in the private registry as a push would.
func (f *fixture) pushPrivate(data []byte) digest.Digest {
	f.t.Helper()
	d := digest.FromBytes(data)
	if err := f.store.PutBlob(context.Background(), private("secret/app"), d, int64(len(data)), bytes.NewReader(data)); err != nil {
		f.t.Fatal(err)
	}
	return d
}

// lyingUpstream makes the fixture's upstream redirect blob requests to a
// server that claims every digest (and sends other bytes for it).
func (f *fixture) lyingUpstream(size int) *upstreamtest.Upstream {
	yes := upstreamtest.New(f.t)
	yes.Lie(int64(size))
	f.up.RedirectBlobs(yes.URL)
	f.up.Lie(int64(size))
	return yes
}

// TestNoCrossRegistryLinkOnUpstreamHEAD: a blob pushed to a private
// registry is not served through a cache registry whose upstream says it
// has every digest; neither a client read, a worker fetch nor a HEAD links
// it there.
func TestNoCrossRegistryLinkOnUpstreamHEAD(t *testing.T) {
	t.Parallel()
	for _, size := range []int{2000, fill.MemMax + 1} { // through memory, through a spool file
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, shareConfig)
			secret := upstreamtest.RandomGzip(size)
			d := f.pushPrivate(secret)
			yes := f.lyingUpstream(len(secret))
			ctx := context.Background()
			repo := hub("attacker/any")

			if b, err := f.serve().OpenBlob(ctx, repo, d); err == nil {
				got, rerr := io.ReadAll(b)
				_ = b.Close()
				if rerr == nil || bytes.Equal(got, secret) {
					t.Fatalf("private blob served through the cache registry (%d bytes, %v)", len(got), rerr)
				}
			}
			if _, _, err := f.cache.Warming().Fetch(ctx, repo, d); err == nil {
				t.Fatal("worker fetch linked the private blob on an upstream HEAD")
			}
			_, _ = f.serve().StatBlob(ctx, repo, d) // the upstream's claim, no link
			f.cache.Wait()
			if _, err := f.store.StatBlob(ctx, repo, d); !errors.Is(err, store.ErrBlobUnknown) {
				t.Fatalf("private blob linked into %s: %v", repo, err)
			}
			if yes.Count("GET", "/blobs/"+d.String()) == 0 {
				t.Error("the connector was never asked for the bytes")
			}
			if b, err := f.serve().OpenBlob(ctx, private("secret/app"), d); err != nil {
				t.Fatalf("the private registry lost its blob: %v", err)
			} else {
				_ = b.Close()
			}
		})
	}
}

// TestCrossRegistryBlobFetchedThroughOwnConnector: content stored for
// another registry reaches a cache registry once its own connector
// delivered bytes that hash to the digest.
func TestCrossRegistryBlobFetchedThroughOwnConnector(t *testing.T) {
	t.Parallel()
	f := newFixture(t, shareConfig)
	data := upstreamtest.RandomGzip(5000)
	d := f.pushPrivate(data)
	f.up.AddBlob("library/app", data)
	ctx := context.Background()
	if err := f.readBlob(ctx, hub("library/app"), d); err != nil {
		t.Fatal(err)
	}
	if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
		t.Fatalf("connector asked %d times for the bytes, want 1", n)
	}
	f.cache.Wait()
	if _, err := f.store.StatBlob(ctx, hub("library/app"), d); err != nil {
		t.Fatalf("not linked after a verified fetch: %v", err)
	}
}

// TestSharedLayerStoredInRegistryLinkedOnHEAD: within one registry a layer
// stored for one repository is linked into another on its upstream's HEAD,
// without downloading it again.
func TestSharedLayerStoredInRegistryLinkedOnHEAD(t *testing.T) {
	t.Parallel()
	f := newFixture(t, shareConfig)
	layer := upstreamtest.RandomGzip(5000)
	d := f.up.AddBlob("a", layer)
	f.up.AddBlob("b", layer)
	ctx := context.Background()
	if _, _, err := f.cache.Warming().Fetch(ctx, hub("a"), d); err != nil {
		t.Fatal(err)
	}
	if err := f.readBlob(ctx, hub("b"), d); err != nil {
		t.Fatal(err)
	}
	if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
		t.Fatalf("blob fetched %d times, want 1", n)
	}
	if _, err := f.serve().OpenBlob(ctx, hub("c"), d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Fatalf("repository whose upstream lacks it: %v, want blob unknown", err)
	}
}

// fakeLeases is a lease service where "another process" holds every key
// until released.
type fakeLeases struct {
	mu    sync.Mutex
	held  bool
	freed chan struct{} // closed by release
	waits atomic.Int32
}

func newFakeLeases() *fakeLeases { return &fakeLeases{held: true, freed: make(chan struct{})} }

func (l *fakeLeases) Acquire(context.Context, string) (func(), bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held {
		return nil, false, nil
	}
	return func() {}, true, nil
}

func (l *fakeLeases) Released(ctx context.Context, _ string) error {
	l.waits.Add(1)
	select {
	case <-l.freed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *fakeLeases) release() {
	l.mu.Lock()
	l.held = false
	l.mu.Unlock()
	close(l.freed)
}

// TestNoCrossRegistryLinkAfterLease: a fill that waited for another
// process's lease does not link what that process stored for another
// registry on an upstream HEAD; it fetches through its own connector.
func TestNoCrossRegistryLinkAfterLease(t *testing.T) {
	t.Parallel()
	leases := newFakeLeases()
	f := newFixture(t, shareConfig, WithLeases(leases))
	secret := upstreamtest.RandomGzip(3000)
	d := f.pushPrivate(secret) // what the other process stored
	f.lyingUpstream(len(secret))
	done := make(chan error, 1)
	go func() {
		_, _, err := f.cache.Warming().Fetch(context.Background(), hub("attacker/any"), d)
		done <- err
	}()
	waitFor(t, func() bool { return leases.waits.Load() > 0 || len(done) > 0 })
	leases.release()
	if err := <-done; err == nil {
		t.Fatal("fetch after the lease linked the private blob on an upstream HEAD")
	}
	if _, err := f.store.StatBlob(context.Background(), hub("attacker/any"), d); !errors.Is(err, store.ErrBlobUnknown) {
		t.Fatalf("private blob linked: %v", err)
	}
}

// TestNoCrossRegistryManifestOnUpstreamHEAD: a manifest pushed to a private
// registry is not served by digest through a lying cache registry.
func TestNoCrossRegistryManifestOnUpstreamHEAD(t *testing.T) {
	t.Parallel()
	f := newFixture(t, shareConfig)
	cfg := f.pushPrivate([]byte(`{"architecture":"amd64","os":"linux"}`))
	data := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":37},"layers":[]}`, cfg))
	md := digest.FromBytes(data)
	ctx := context.Background()
	if err := f.store.PutManifest(ctx, private("secret/app"), store.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json",
		Digest: md, Data: data}, store.PutManifestOptions{Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	f.lyingUpstream(len(data))
	if m, err := f.serve().Manifest(ctx, hub("attacker/any"), md); err == nil {
		t.Fatalf("private manifest served through the cache registry: %s", m.Data)
	}
	if _, err := f.store.Manifest(ctx, hub("attacker/any"), md); err == nil {
		t.Fatal("private manifest stored in the cache registry")
	}
}

// TestNoCrossRegistryLinkThroughLocalChain: a registry reading a cache
// registry through a local connector does not get a private blob linked
// on the cache registry's lying upstream either.
func TestNoCrossRegistryLinkThroughLocalChain(t *testing.T) {
	t.Parallel()
	f := newFixture(t, chainConfig)
	secret := upstreamtest.RandomGzip(3000)
	d := f.pushPrivate(secret)
	f.lyingUpstream(len(secret))
	ctx := context.Background()
	rel := store.Repo{Registry: "release", Name: "attacker/any"}
	if err := f.readBlob(ctx, rel, d); err == nil {
		t.Fatal("private blob served through a local connector chain")
	}
	f.cache.Wait()
	for _, repo := range []store.Repo{rel, hub("attacker/any")} {
		if _, err := f.store.StatBlob(ctx, repo, d); !errors.Is(err, store.ErrBlobUnknown) {
			t.Errorf("private blob linked into %s: %v", repo, err)
		}
	}
}

// TestLocalConnectorLinksStoredCopy: what a local connector's registry
// stores is linked, not downloaded again.
func TestLocalConnectorLinksStoredCopy(t *testing.T) {
	t.Parallel()
	f := newFixture(t, chainConfig)
	data := upstreamtest.RandomGzip(3000)
	d := f.up.AddBlob("team/app", data)
	ctx := context.Background()
	if err := f.readBlob(ctx, hub("team/app"), d); err != nil {
		t.Fatal(err)
	}
	f.cache.Wait()
	f.up.SetDown(true)
	if err := f.readBlob(ctx, store.Repo{Registry: "release", Name: "team/app"}, d); err != nil {
		t.Fatalf("through the local connector: %v", err)
	}
	if n := f.up.Count("GET", "/blobs/"+d.String()); n != 1 {
		t.Fatalf("blob fetched %d times, want 1", n)
	}
}
