// Package cache is the pull-through cache: it answers reads from the local
// store and, on a miss, from the registry's connectors in order, storing
// what it fetched. Concurrent misses for the same content share one
// upstream fetch; a tag whose connectors all fail is served stale.
//
// Cache is a decorator over the store: it decides local or connector, and
// holds the policy (which repositories may share stored content, what is
// counted, when a client's content is written). Blob downloads themselves
// run in the fill engine (package fill: coalescing, detached fills, spool
// and followers, verify before the last byte, the cross-process lease).
// Callers read through a view that fixes how the cache works for them:
// Serving for the registry API, Warming for workers and jobs (view.go).
//
// # Following a cold blob miss
//
// A client's GET /v2/hub/app/blobs/sha256:… reaches registryapi's getBlob
// (registryapi/blobs.go), which reads through the request's view
// (Serving().Request(id), made in Handler.ServeHTTP): view.OpenBlob calls
// Cache.openBlob (blobs.go). There the store's OpenBlob misses; the
// registry's connectors allowed for the repository are listed (sources);
// the miss marks a client in flight (priority.go); shareFill joins the
// fill for hub and the digest, or starts one (joinFill builds the
// fill.Job: sources, the sharing rule as Adopt, the miss event as
// Fetched). In the engine (fill/engine.go) Engine.Join starts run in its
// own goroutine, detached from the request: it takes the blob's lease
// when there is a lease service (awaitLease), looks at the store once
// (adopt: content stored for another repository that may be shared is
// linked instead of fetched), then calls each source's GetBlob
// (connector.Upstream, internal/connector/upstream.go: the upstream GET)
// until one answers. stream puts the body into memory or the store's spool,
// and openBlob hands the client a fill.Reader that follows it as it
// arrives; the reader gets the last byte once the digest is verified.
package cache
