package registryapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
)

// maxPage caps n on paginated lists.
const maxPage = 10000

// page applies n/last pagination to a sorted list. next reports whether
// more entries follow.
func page(r *http.Request, all []string) (out []string, n int, next bool, ae *apiError) {
	q := r.URL.Query()
	n = -1
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return nil, 0, false, errorf(CodePaginationInvalid, "invalid n %q", truncate(s))
		}
		n = min(v, maxPage)
	}
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(all, last)
		if i < len(all) && all[i] == last {
			i++
		}
		all = all[i:]
	}
	if n >= 0 && len(all) > n {
		return all[:n], n, true, nil
	}
	return all, n, false, nil
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

func (h *Handler) tags(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	all, err := rt.read.Tags(r.Context(), rt.repo)
	if err != nil {
		return h.fail(r, rt, err)
	}
	list, n, next, ae := page(r, all)
	if ae != nil {
		return ae
	}
	if next && len(list) > 0 {
		v := url.Values{"n": {strconv.Itoa(n)}, "last": {list[len(list)-1]}}
		w.Header().Set("Link", `</v2/`+rt.name+`/tags/list?`+v.Encode()+`>; rel="next"`)
	}
	if list == nil {
		list = []string{}
	}
	writeJSON(w, r, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{rt.name, list})
	return nil
}

func (h *Handler) catalog(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	var all []string
	canPull := h.pullFilter(r)
	err := h.store.Repositories(r.Context(), "", func(repo store.Repo) error {
		if !canPull(repo.Registry) {
			return nil
		}
		all = append(all, repo.String())
		if len(all) > 1_000_000 {
			return errors.New("catalog too large")
		}
		return nil
	})
	if err != nil {
		return h.fail(r, rt, err)
	}
	sort.Strings(all)
	list, n, next, ae := page(r, all)
	if ae != nil {
		return ae
	}
	if next && len(list) > 0 {
		v := url.Values{"n": {strconv.Itoa(n)}, "last": {list[len(list)-1]}}
		w.Header().Set("Link", `</v2/_catalog?`+v.Encode()+`>; rel="next"`)
	}
	if list == nil {
		list = []string{}
	}
	writeJSON(w, r, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{list})
	return nil
}

func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	d, ae := parseDigestParam(rt.ref)
	if ae != nil {
		return ae
	}
	descs, err := rt.read.Referrers(r.Context(), rt.repo, d)
	if err != nil && !errors.Is(err, store.ErrNameUnknown) {
		return h.fail(r, rt, err)
	}
	if at := r.URL.Query().Get("artifactType"); at != "" {
		kept := descs[:0:0]
		for _, x := range descs {
			if x.ArtifactType == at {
				kept = append(kept, x)
			}
		}
		descs = kept
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	if descs == nil {
		descs = []ocispec.Descriptor{}
	}
	writeJSON(w, r, manifest.OCIIndex, struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Manifests     []ocispec.Descriptor `json:"manifests"`
	}{2, manifest.OCIIndex, descs})
	return nil
}
