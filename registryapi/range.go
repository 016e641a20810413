package registryapi

import (
	"errors"
	"strconv"
	"strings"
)

// errRange is returned for a Range header that cannot be satisfied.
var errRange = errors.New("invalid range")

// ParseRange parses a single-range "bytes=" Range header against a body of
// size bytes and returns the first and last byte offsets (inclusive).
// Multiple ranges, malformed headers and unsatisfiable ranges are errors.
func ParseRange(h string, size int64) (start, end int64, err error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, 0, errRange
	}
	spec = strings.TrimSpace(spec)
	if strings.Contains(spec, ",") {
		return 0, 0, errRange
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, errRange
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)
	if first == "" {
		// Suffix range: the last n bytes.
		n, err := parseOffset(last)
		if err != nil || n == 0 || size == 0 {
			return 0, 0, errRange
		}
		if n > size {
			n = size
		}
		return size - n, size - 1, nil
	}
	start, err = parseOffset(first)
	if err != nil || start >= size {
		return 0, 0, errRange
	}
	if last == "" {
		return start, size - 1, nil
	}
	end, err = parseOffset(last)
	if err != nil || end < start {
		return 0, 0, errRange
	}
	if end >= size {
		end = size - 1
	}
	return start, end, nil
}

func parseOffset(s string) (int64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errRange
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errRange
	}
	return n, nil
}

// parseContentRange parses an upload PATCH Content-Range, "start-end"
// (a "bytes " or "bytes=" prefix is tolerated).
func parseContentRange(h string) (start, end int64, err error) {
	h = strings.TrimSpace(h)
	h = strings.TrimPrefix(h, "bytes=")
	h = strings.TrimPrefix(h, "bytes ")
	if i := strings.IndexByte(h, '/'); i >= 0 {
		h = h[:i]
	}
	a, b, ok := strings.Cut(h, "-")
	if !ok {
		return 0, 0, errRange
	}
	start, err = parseOffset(a)
	if err != nil {
		return 0, 0, err
	}
	end, err = parseOffset(b)
	if err != nil || end < start {
		return 0, 0, errRange
	}
	return start, end, nil
}
