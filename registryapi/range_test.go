package registryapi

import "testing"

func TestParseRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		h          string
		size       int64
		start, end int64
		ok         bool
	}{
		{"bytes=0-9", 100, 0, 9, true},
		{"bytes=10-", 100, 10, 99, true},
		{"bytes=-10", 100, 90, 99, true},
		{"bytes=-1000", 100, 0, 99, true},
		{"bytes=90-1000", 100, 90, 99, true},
		{"bytes=0-0", 1, 0, 0, true},
		{"bytes= 5-6", 100, 5, 6, true},
		{"bytes=500-0", 100, 0, 0, false},
		{"bytes=5000-10000", 100, 0, 0, false},
		{"bytes=100-", 100, 0, 0, false},
		{"bytes=9-5", 100, 0, 0, false},
		{"bytes=0-1,5-6", 100, 0, 0, false},
		{"bytes=-0", 100, 0, 0, false},
		{"bytes=-", 100, 0, 0, false},
		{"bytes=", 100, 0, 0, false},
		{"items=0-5", 100, 0, 0, false},
		{"bytes=a-b", 100, 0, 0, false},
		{"bytes=+1-5", 100, 0, 0, false},
		{"bytes=0-99999999999999999999", 100, 0, 0, false},
		{"bytes=0-", 0, 0, 0, false},
	}
	for _, tt := range tests {
		start, end, err := ParseRange(tt.h, tt.size)
		if (err == nil) != tt.ok {
			t.Errorf("ParseRange(%q, %d) error = %v, want ok=%v", tt.h, tt.size, err, tt.ok)
			continue
		}
		if tt.ok && (start != tt.start || end != tt.end) {
			t.Errorf("ParseRange(%q, %d) = %d-%d, want %d-%d", tt.h, tt.size, start, end, tt.start, tt.end)
		}
	}
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-9", "bytes=-5", "bytes=3-", "bytes=0-1,2-3", "bytes=9-1", ""} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		start, end, err := ParseRange(h, size)
		if err != nil {
			return
		}
		if start < 0 || end < start || end >= size {
			t.Fatalf("ParseRange(%q, %d) = %d-%d: outside the body", h, size, start, end)
		}
	})
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		h          string
		start, end int64
		ok         bool
	}{
		{"0-99", 0, 99, true},
		{"bytes 5-9/100", 5, 9, true},
		{"9-5", 0, 0, false},
		{"x-5", 0, 0, false},
		{"5", 0, 0, false},
	} {
		s, e, err := parseContentRange(tt.h)
		if (err == nil) != tt.ok || (tt.ok && (s != tt.start || e != tt.end)) {
			t.Errorf("parseContentRange(%q) = %d-%d, %v", tt.h, s, e, err)
		}
	}
}
