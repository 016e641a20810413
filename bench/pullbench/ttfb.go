package main

import (
	"fmt"
	"io"
	"net/http"
	"time"
)

// firstByte is one cold blob GET: the time to the first byte of the blob
// (of the body, not the headers) and to the last, both from the start of
// the request.
type firstByte struct {
	first, total time.Duration
}

// manifestAccept is what a client asking for an image's tag accepts.
const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"

// coldFirstByte GETs one blob of im per run from a fresh cache of every
// target, after the image's tag (as a client would: the cache has then
// talked to the upstream once), and records the time to its first byte.
func (e *env) coldFirstByte(res map[string][]firstByte, im *image, blob content, runs int) error {
	for run := range runs {
		for _, t := range rotated(e.coldTargets(), run) {
			s, err := e.startCache(t)
			if err != nil {
				return err
			}
			fb, err := getFirstByte(s.addr, im, blob)
			e.stopServer(s)
			if err != nil {
				return fmt.Errorf("%s cold GET of %s: %w", t, blob.desc.Digest, err)
			}
			res[t] = append(res[t], fb)
			progress("first byte of a cold %s blob, %s run %d: %v (all %v)", mib(blob.desc.Size), t, run+1,
				fb.first.Round(10*time.Microsecond), fb.total.Round(time.Millisecond))
		}
	}
	return nil
}

// getFirstByte GETs the image's tag, then times a GET of blob on a new
// connection (as a new client's first blob request would be) and checks
// its length.
func getFirstByte(addr string, im *image, blob content) (firstByte, error) {
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/"+im.repo+"/manifests/"+im.tag, nil)
	if err != nil {
		return firstByte{}, err
	}
	req.Header.Set("Accept", manifestAccept)
	if _, err := do(client, req, http.StatusOK); err != nil {
		return firstByte{}, err
	}
	client.CloseIdleConnections()

	var fb firstByte
	req, err = http.NewRequest(http.MethodGet, "http://"+addr+"/v2/"+im.repo+"/blobs/"+blob.desc.Digest.String(), nil)
	if err != nil {
		return firstByte{}, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return firstByte{}, err
	}
	defer resp.Body.Close()
	// The headers may come before the blob does (a cache that has not
	// got it yet, or an upstream still opening its file): time the body.
	var first [1]byte
	n, err := io.ReadFull(resp.Body, first[:])
	fb.first = time.Since(start)
	if err == nil {
		var m int64
		m, err = io.Copy(io.Discard, resp.Body)
		n += int(m)
	}
	fb.total = time.Since(start)
	if err != nil {
		return firstByte{}, err
	}
	if resp.StatusCode != http.StatusOK || int64(n) != blob.desc.Size {
		return firstByte{}, fmt.Errorf("status %d with %d bytes, want 200 with %d", resp.StatusCode, n, blob.desc.Size)
	}
	return fb, nil
}

// firstBytes times the first byte of a cold GET of the small image's
// largest layer (streamed through memory by regwarm) and of the large
// image's layer (through a spool file).
func (e *env) firstBytes(res *results, md *meta, runs int) error {
	if err := e.coldFirstByte(res.firstSmall, md.small, largestLayer(md.small), runs); err != nil {
		return err
	}
	return e.coldFirstByte(res.firstBig, md.big, md.big.layers[0], runs)
}

// firsts returns the times to the first byte.
func firsts(fbs []firstByte) []time.Duration {
	out := make([]time.Duration, len(fbs))
	for i, fb := range fbs {
		out[i] = fb.first
	}
	return out
}

// largestLayer returns im's largest layer.
func largestLayer(im *image) content {
	l := im.layers[0]
	for _, c := range im.layers[1:] {
		if c.desc.Size > l.desc.Size {
			l = c
		}
	}
	return l
}
