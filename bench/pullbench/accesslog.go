package main

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// traffic is what the upstream served in a window of its access log.
type traffic struct {
	requests int
	bytes    int64
	// blobGETs counts GET requests per blob digest.
	blobGETs map[string]int
	// byKind counts requests by method and kind ("GET blob", "HEAD manifest", "GET ping" …).
	byKind map[string]int
}

// accessLine matches a combined-format access log line of docker-registry:
// method, path, status and response size.
var accessLine = regexp.MustCompile(`^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)`)

// parseAccess adds the complete lines of b to a traffic summary.
func parseAccess(b []byte) traffic {
	t := traffic{blobGETs: map[string]int{}, byKind: map[string]int{}}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break // a partial last line: not written completely yet
		}
		line := b[:i]
		b = b[i+1:]
		m := accessLine.FindSubmatch(line)
		if m == nil {
			continue
		}
		method, path := string(m[1]), string(m[2])
		t.requests++
		if n, err := strconv.ParseInt(string(m[4]), 10, 64); err == nil {
			t.bytes += n
		}
		kind := pathKind(path)
		t.byKind[method+" "+kind]++
		if method == "GET" && kind == "blob" {
			t.blobGETs[path[strings.LastIndex(path, "/")+1:]]++
		}
	}
	return t
}

// pathKind classifies a registry API path.
func pathKind(path string) string {
	path, _, _ = strings.Cut(path, "?")
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case strings.Contains(path, "/blobs/uploads"):
		return "upload"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	}
	return "other"
}

// logMark is a position in the upstream's access log.
type logMark int64

// mark returns the current end of the access log.
func (e *env) mark() (logMark, error) {
	fi, err := os.Stat(e.accessLog)
	if err != nil {
		return 0, err
	}
	return logMark(fi.Size()), nil
}

// since waits until the access log has stopped growing (a line is written
// just after its response ends, so it may lag the client by a moment) and
// returns the traffic logged after m.
func (e *env) since(m logMark) (traffic, error) {
	var size int64 = -1
	for stable := 0; stable < 3; {
		time.Sleep(50 * time.Millisecond)
		fi, err := os.Stat(e.accessLog)
		if err != nil {
			return traffic{}, err
		}
		if fi.Size() == size {
			stable++
		} else {
			size, stable = fi.Size(), 0
		}
	}
	f, err := os.Open(e.accessLog)
	if err != nil {
		return traffic{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, int64(m), size-int64(m)))
	if err != nil {
		return traffic{}, err
	}
	return parseAccess(b), nil
}
