package registryapi

import (
	"net/http"
	"strings"

	"github.com/regwarm/regwarm/internal/ref"
	"github.com/regwarm/regwarm/internal/store"
)

// Route kinds; also the bounded values of the metrics route label.
const (
	routePing        = "ping"
	routeCatalog     = "catalog"
	routeManifest    = "manifest"
	routeBlob        = "blob"
	routeUploadStart = "upload"
	routeUpload      = "upload" // with an id
	routeTags        = "tags"
	routeReferrers   = "referrers"
	routeOther       = "other"
)

// route is a parsed /v2/ request path.
type route struct {
	kind string
	// name is the repository as the client wrote it (with any registry
	// prefix), used to build Location and Link headers.
	name string
	repo store.Repo
	// ref is the tag or digest (manifests), the digest (blobs, referrers)
	// or the upload id ("" for an upload start).
	ref string
	// id is the request id (for logs); read is what this request reads
	// through (Reader.Request).
	id   string
	read store.Reader
}

// parsePath splits a /v2/ path into its route. It returns the route kind even
// on error so metrics stay labelled.
func (h *Handler) parsePath(r *http.Request) (route, *apiError) {
	p := r.URL.EscapedPath()
	if p == "/v2" || p == "/v2/" {
		return route{kind: routePing}, nil
	}
	if !strings.HasPrefix(p, "/v2/") {
		return route{kind: routeOther}, errorf(CodeNameUnknown, "not a registry API path")
	}
	p = strings.TrimPrefix(p, "/v2/")
	if p == "_catalog" {
		return route{kind: routeCatalog}, nil
	}
	// Encoded characters never occur in valid names, tags or digests; refusing
	// them closes encoded-slash and encoded-dot traversal tricks.
	if strings.Contains(p, "%") {
		return route{kind: routeOther}, errorf(CodeNameInvalid, "encoded characters are not allowed in the path")
	}
	segs := strings.Split(p, "/")
	n := len(segs)
	var rt route
	var nameSegs []string
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		rt.kind, nameSegs = routeTags, segs[:n-2]
	case n >= 3 && segs[n-2] == "manifests":
		rt.kind, nameSegs, rt.ref = routeManifest, segs[:n-2], segs[n-1]
	case n >= 3 && segs[n-2] == "referrers":
		rt.kind, nameSegs, rt.ref = routeReferrers, segs[:n-2], segs[n-1]
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		rt.kind, nameSegs = routeUploadStart, segs[:n-2]
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		rt.kind, nameSegs, rt.ref = routeUpload, segs[:n-3], segs[n-1]
	case n >= 3 && segs[n-2] == "blobs":
		rt.kind, nameSegs, rt.ref = routeBlob, segs[:n-2], segs[n-1]
	default:
		return route{kind: routeOther}, errorf(CodeNameUnknown, "unknown registry API path")
	}
	rt.name = strings.Join(nameSegs, "/")
	repo, ae := h.resolveName(rt.name, r.URL.Query().Get("ns"))
	if ae != nil {
		return rt, ae
	}
	rt.repo = repo
	return rt, nil
}

// resolveName maps a client repository name to a local registry and
// repository: a first segment naming a registry means that registry; else
// the registry mirroring ns, else the default registry.
func (h *Handler) resolveName(name, ns string) (store.Repo, *apiError) {
	if err := ref.ValidName(name); err != nil {
		return store.Repo{}, errorf(CodeNameInvalid, "invalid repository name")
	}
	first, rest, _ := strings.Cut(name, "/")
	if _, ok := h.regs.Registry(first); ok {
		if rest == "" {
			return store.Repo{}, errorf(CodeNameUnknown, "a repository name is required after the registry %q", first)
		}
		return store.Repo{Registry: first, Name: rest}, nil
	}
	if ns != "" {
		if reg, ok := h.regs.RegistryForHost(ns); ok {
			return store.Repo{Registry: reg.Name, Name: name}, nil
		}
	}
	if reg, ok := h.regs.DefaultRegistry(); ok {
		return store.Repo{Registry: reg.Name, Name: name}, nil
	}
	return store.Repo{}, errorf(CodeNameUnknown, "no registry named %q and no default registry", first)
}
