// Command relay is the floor of the pull benchmark: a minimal reverse
// proxy. With -verify it hashes every blob body it relays and holds back
// the last byte until the digest matched, which is the least work any
// cache that verifies what it serves must do on a cold pull; without it,
// it only copies. With -store DIR it also writes each blob to a file in
// DIR while relaying it and makes it durable (fsync, rename) after the
// last byte went out: the least a cache that verifies and stores does.
// bench/pullbench measures cold pulls through it next to regwarm's.
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := flag.String("upstream", "", "upstream base URL (http://host:port)")
	verify := flag.Bool("verify", false, "hash blob bodies and hold back the last byte until the digest matched")
	storeDir := flag.String("store", "", "also write every blob to a file in this directory while relaying it (implies -verify)")
	flag.Parse()
	if *upstream == "" {
		log.Fatal("relay: -upstream is required")
	}
	r := &relay{upstream: strings.TrimSuffix(*upstream, "/"), verify: *verify || *storeDir != "", store: *storeDir,
		client: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	srv := &http.Server{Addr: *listen, Handler: r, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

type relay struct {
	upstream string
	verify   bool
	store    string // directory blobs are written to; "" for none
	client   http.RoundTripper
}

func (p *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req.Header = r.Header.Clone()
	res, err := p.client.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer res.Body.Close()
	d, isBlob := blobDigest(r.URL.Path)
	verify := p.verify && r.Method == http.MethodGet && isBlob && res.StatusCode == http.StatusOK && res.ContentLength > 0
	var file *os.File
	if verify && p.store != "" {
		if file, err = os.CreateTemp(p.store, "blob-"); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer func() {
			if file != nil { // not handed to durable
				_ = file.Close()
				_ = os.Remove(file.Name())
			}
		}()
	}
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(res.StatusCode)
	if r.Method != http.MethodGet {
		return
	}
	if !verify {
		_, _ = copyBody(w, res.Body)
		return
	}
	h := d.Algorithm().Hash()
	var sink io.Writer = h
	if file != nil {
		sink = io.MultiWriter(file, h)
	}
	src := io.TeeReader(res.Body, sink)
	if _, err := copyBody(w, io.LimitReader(src, res.ContentLength-1)); err != nil {
		return
	}
	var last [1]byte
	if _, err := io.ReadFull(src, last[:]); err != nil {
		return
	}
	if digest.NewDigest(d.Algorithm(), h) != d {
		log.Printf("relay: %s: digest mismatch; last byte withheld", d)
		return
	}
	_, _ = w.Write(last[:])
	if file != nil {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		go durable(file, filepath.Join(p.store, d.Encoded()))
		file = nil
	}
}

// durable syncs a verified blob file and renames it into place.
func durable(f *os.File, path string) {
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		log.Printf("relay: store %s: %v", path, err)
		_ = os.Remove(f.Name())
	}
}

// copyBody copies with a large buffer (and without ReadFrom, like a
// cache streaming a body it inspects).
func copyBody(w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	return io.CopyBuffer(struct{ io.Writer }{w}, r, buf)
}

// blobDigest returns the digest of a /v2/<name>/blobs/<digest> path.
func blobDigest(path string) (digest.Digest, bool) {
	i := strings.LastIndex(path, "/blobs/")
	if i < 0 {
		return "", false
	}
	d, err := digest.Parse(path[i+len("/blobs/"):])
	if err != nil {
		return "", false
	}
	return d, !errors.Is(d.Validate(), digest.ErrDigestUnsupported)
}
