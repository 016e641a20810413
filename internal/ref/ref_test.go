package ref

import (
	"errors"
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	t.Parallel()
	good := []string{"a", "library/alpine", "a-b/c_d/e.f", "a__b", "a---b", "0/1/2"}
	bad := []string{"", "A", "a/", "/a", "a//b", "../a", "a/../b", "a/./b", ".", "_a", "a_", "a%2fb",
		"a b", "a\x00b", strings.Repeat("a", 256), "a/_manifests"}
	for _, s := range good {
		if err := ValidName(s); err != nil {
			t.Errorf("ValidName(%q) = %v", s, err)
		}
	}
	for _, s := range bad {
		if err := ValidName(s); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v, want ErrInvalidName", s, err)
		}
	}
}

func TestParseDigest(t *testing.T) {
	t.Parallel()
	h256 := strings.Repeat("a", 64)
	h512 := strings.Repeat("b", 128)
	tests := []struct {
		in   string
		want error
	}{
		{"sha256:" + h256, nil},
		{"sha512:" + h512, nil},
		{"sha256:" + strings.ToUpper(h256), ErrInvalidDigest},
		{"sha256:" + h256[:63], ErrInvalidDigest},
		{"sha256:baddigeststring", ErrInvalidDigest},
		{"sha512:" + h256, ErrInvalidDigest},
		{"md5:d41d8cd98f00b204e9800998ecf8427e", ErrUnsupported},
		{"sha256", ErrInvalidDigest},
		{":" + h256, ErrInvalidDigest},
		{"SHA256:" + h256, ErrInvalidDigest},
		{"sha256:../../etc/passwd", ErrInvalidDigest},
	}
	for _, tt := range tests {
		_, err := ParseDigest(tt.in)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("ParseDigest(%q) = %v, want %v", tt.in, err, tt.want)
		}
	}
}

func TestValidTag(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"latest", "v1.2.3", "_x", "A-b_c.d", strings.Repeat("a", 128)} {
		if ValidTag(s) != nil {
			t.Errorf("ValidTag(%q) failed", s)
		}
	}
	for _, s := range []string{"", ".x", "-x", "a/b", "a:b", strings.Repeat("a", 129), "a b"} {
		if ValidTag(s) == nil {
			t.Errorf("ValidTag(%q) succeeded", s)
		}
	}
}

func FuzzParseDigest(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("a", 64))
	f.Add("sha512:" + strings.Repeat("0", 128))
	f.Add("x:y")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDigest(s)
		if err != nil {
			return
		}
		if d.Validate() != nil {
			t.Fatalf("ParseDigest(%q) accepted a digest go-digest rejects", s)
		}
		if strings.ContainsAny(s, "/.\\") {
			t.Fatalf("ParseDigest(%q) accepted a path character", s)
		}
	})
}

func FuzzValidName(f *testing.F) {
	f.Add("library/alpine")
	f.Add("a/../b")
	f.Fuzz(func(t *testing.T, s string) {
		if ValidName(s) != nil {
			return
		}
		for _, c := range strings.Split(s, "/") {
			if c == "" || c == "." || c == ".." || strings.HasPrefix(c, "_") {
				t.Fatalf("ValidName(%q) accepted component %q", s, c)
			}
		}
	})
}
