package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Load reads the file at path and parses it with Parse. Relative paths in
// the file are used as written (relative to the working directory).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data)
}

// Parse decodes exactly one YAML document strictly (unknown keys and values
// of the wrong type are errors naming the line and field path), applies
// defaults and validates the result. It returns every problem found, joined
// with errors.Join; see FieldError.
func Parse(data []byte) (*Config, error) {
	c, err := Inspect(data)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Inspect is Parse for tools that report on a config (`regwarm config
// check`): with problems it still returns the config as far as it decoded,
// with defaults applied (nil only when data is not one YAML mapping), so
// that more can be checked, such as CheckSecrets. Decode errors (every
// unknown key and wrong type) and validation problems come in one pass; a
// field that failed to decode is not reported again by validation. A file
// without "version" is an error.
func Inspect(data []byte) (*Config, error) {
	root, err := document(data)
	if err != nil {
		return nil, err
	}
	var c Config
	var errs []error
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		derr := decodeError(err, root, data)
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, derr // a syntax error: nothing was decoded
		}
		errs = append(errs, derr)
	}
	if !hasKey(root, "version") {
		errs = append(errs, &FieldError{Path: "version", Msg: `required: start the file with "version: 1"`, Kind: ErrInvalid})
	}
	markExplicit(&c, data)
	c.ApplyDefaults()
	bad := decodedPaths(errs)
	for _, e := range unjoin(c.Validate()) {
		if fe, ok := e.(*FieldError); ok && covered(bad, fe.Path) {
			continue
		}
		errs = append(errs, e)
	}
	return &c, errors.Join(errs...)
}

// hasKey reports whether the mapping root has key with a non-null value.
func hasKey(root *yaml.Node, key string) bool {
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == key {
			return root.Content[i+1].ShortTag() != "!!null"
		}
	}
	return false
}

// decodedPaths lists the field paths of the decode errors in errs.
func decodedPaths(errs []error) []string {
	var out []string
	for _, err := range errs {
		for _, e := range unjoin(err) {
			if fe, ok := e.(*FieldError); ok && errors.Is(fe, ErrDecode) && fe.Path != "" {
				out = append(out, fe.Path)
			}
		}
	}
	return out
}

// covered reports whether path is one of paths, or below or above one:
// validation of a field whose value failed to decode only repeats the
// problem (a "required" for what was written wrong).
func covered(paths []string, path string) bool {
	for _, p := range paths {
		if p == path || strings.HasPrefix(path, p+".") || strings.HasPrefix(path, p+"[") ||
			strings.HasPrefix(p, path+".") || strings.HasPrefix(p, path+"[") {
			return true
		}
	}
	return false
}

// Problems lists the single problems of an error from Parse, Inspect,
// Validate or CheckSecrets (the leaves of its errors.Join tree); nil gives
// none.
func Problems(err error) []error { return unjoin(err) }

// unjoin flattens an errors.Join tree into its leaves; nil gives none.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}

// document returns the root node of the single YAML document in data.
func document(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, ErrEmpty
		}
		return nil, syntaxError(err, data)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, fmt.Errorf("%w: a second document starts at line %d", ErrMultipleDocuments, next.Line)
	case !errors.Is(err, io.EOF):
		return nil, syntaxError(err, data)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, ErrEmpty
	}
	root := doc.Content[0]
	switch {
	case root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null":
		return nil, ErrEmpty
	case root.Kind != yaml.MappingNode:
		return nil, &FieldError{Line: root.Line, Msg: "config must be a mapping of keys to values", Kind: ErrDecode}
	}
	return root, nil
}

// markExplicit records which defaultable values the file gave explicitly,
// where the zero value means something other than "use the default": a
// tag_ttl of 0 (always revalidate) and an empty schedule (job disabled).
// A key with a null value counts as absent.
func markExplicit(c *Config, data []byte) {
	var shadow struct {
		Registries []struct {
			TagTTL *Duration `yaml:"tag_ttl"`
		} `yaml:"registries"`
		Jobs struct {
			DanglingScan struct {
				Schedule *string `yaml:"schedule"`
			} `yaml:"dangling_scan"`
			Verify struct {
				Schedule *string `yaml:"schedule"`
			} `yaml:"verify"`
			Refresh struct {
				Schedule *string `yaml:"schedule"`
			} `yaml:"refresh"`
			GC struct {
				Schedule *string   `yaml:"schedule"`
				Delay    *Duration `yaml:"delay"`
			} `yaml:"gc"`
		} `yaml:"jobs"`
	}
	// The strict decode succeeded, so this one cannot fail in a way that
	// matters; a partial result is still correct for what it sets.
	_ = yaml.Unmarshal(data, &shadow)
	for i, r := range shadow.Registries {
		if i < len(c.Registries) && r.TagTTL != nil {
			c.Registries[i].ttlSet = true
		}
	}
	c.Jobs.DanglingScan.scheduleSet = shadow.Jobs.DanglingScan.Schedule != nil
	c.Jobs.Verify.scheduleSet = shadow.Jobs.Verify.Schedule != nil
	c.Jobs.Refresh.scheduleSet = shadow.Jobs.Refresh.Schedule != nil
	c.Jobs.GC.scheduleSet = shadow.Jobs.GC.Schedule != nil
	c.Jobs.GC.delaySet = shadow.Jobs.GC.Delay != nil
}

var (
	reLine     = regexp.MustCompile(`(?s)^(?:yaml: )?line (\d+): (.*)$`)
	reUnknown  = regexp.MustCompile(`^field (.+) not found in type (\S+)$`)
	reTwice    = regexp.MustCompile(`^field (.+) already set in type (\S+)$`)
	reDup      = regexp.MustCompile(`^mapping key ("(?:[^"\\]|\\.)*") already defined at line (\d+)$`)
	reType     = regexp.MustCompile("(?s)^cannot unmarshal (\\S+?)(?: `(.*)`)? into (\\S+)$")
	reDuration = regexp.MustCompile(`(?s)^invalid (?:duration|byte size) ("(?:[^"\\]|\\.)*"): (.*)$`)
)

// syntaxError turns a YAML syntax error into a FieldError with its line.
// Some yaml errors carry no line; for those the line is found by parsing
// ever longer prefixes of data until the same error appears.
func syntaxError(err error, data []byte) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := reLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &FieldError{Line: line, Msg: m[2], Kind: ErrDecode}
	}
	return &FieldError{Line: errorLine(data, err.Error()), Msg: msg, Kind: ErrDecode}
}

// errorLine returns the first line at which parsing data up to and
// including that line fails with msg; 0 if not found or data is large.
func errorLine(data []byte, msg string) int {
	const maxLines = 500
	if len(data) > 32<<10 {
		return 0
	}
	end := 0
	for line := 1; line <= maxLines && end < len(data); line++ {
		i := bytes.IndexByte(data[end:], '\n')
		if i < 0 {
			end = len(data)
		} else {
			end += i + 1
		}
		dec := yaml.NewDecoder(bytes.NewReader(data[:end]))
		for {
			var n yaml.Node
			err := dec.Decode(&n)
			if err == nil {
				continue
			}
			if err.Error() == msg {
				return line
			}
			break
		}
	}
	return 0
}

// decodeError turns the strict decoder's error into FieldErrors that name
// the line and, where root allows finding it, the field path.
func decodeError(err error, root *yaml.Node, data []byte) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return syntaxError(err, data)
	}
	ix := index(root)
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		errs = append(errs, describe(msg, ix))
	}
	return errors.Join(errs...)
}

// describe rewrites one yaml type error message as a FieldError.
func describe(msg string, ix []located) *FieldError {
	fe := &FieldError{Msg: msg, Kind: ErrDecode}
	m := reLine.FindStringSubmatch(msg)
	if m == nil {
		return fe
	}
	fe.Line, _ = strconv.Atoi(m[1])
	fe.Msg = m[2]
	if u := reUnknown.FindStringSubmatch(fe.Msg); u != nil {
		fe.Path = u[1]
		if l, ok := findKey(ix, fe.Line, u[1]); ok {
			fe.Path = l.path
		}
		fe.Msg = "unknown key"
		if s := closest(u[1], knownKeys()[u[2]]); s != "" {
			fe.Msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		return fe
	}
	if u := reTwice.FindStringSubmatch(fe.Msg); u != nil {
		fe.Path = u[1]
		if l, ok := findKey(ix, fe.Line, u[1]); ok {
			fe.Path = l.path
		}
		fe.Msg = "key given more than once"
		return fe
	}
	if u := reDup.FindStringSubmatch(fe.Msg); u != nil {
		name, _ := strconv.Unquote(u[1])
		fe.Path = name
		if l, ok := findKey(ix, fe.Line, name); ok {
			fe.Path = l.path
		}
		fe.Msg = "key given more than once (first at line " + u[2] + ")"
		return fe
	}
	if u := reDuration.FindStringSubmatch(fe.Msg); u != nil {
		v, _ := strconv.Unquote(u[1])
		if l, ok := findValue(ix, fe.Line, "", v); ok {
			fe.Path = l.path
		}
		fe.Value, fe.Msg = u[1], u[2]
		return fe
	}
	if u := reType.FindStringSubmatch(fe.Msg); u != nil {
		tag, val, want := u[1], u[2], u[3]
		l, ok := findValue(ix, fe.Line, tag, val)
		if ok {
			fe.Path = l.path
		}
		switch {
		case ok && l.val.Kind == yaml.ScalarNode:
			fe.Value = strconv.Quote(l.val.Value)
			fe.Msg = "want " + friendly(want)
		case tag == "!!seq":
			fe.Msg = "want " + friendly(want) + ", got a list"
		case tag == "!!map":
			fe.Msg = "want " + friendly(want) + ", got a mapping"
		default:
			fe.Msg = "want " + friendly(want) + ", got " + tag + " `" + val + "`"
		}
	}
	return fe
}

// friendly names a Go type the way a config author thinks of it.
func friendly(goType string) string {
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	case goType == "config.Duration":
		return "a duration like 5m"
	case goType == "config.ByteSize":
		return "a size like 50GiB"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.Contains(goType, "config."):
		return "a mapping of keys to values"
	}
	return goType
}

// located is a node of the document with its field path.
type located struct {
	path string
	key  *yaml.Node // nil for sequence items
	val  *yaml.Node
}

// index lists every mapping value and sequence item under root with its
// path. Merge keys ("<<") add their mapping's keys to the parent path;
// aliases are not followed (their target is indexed where it is defined).
func index(root *yaml.Node) []located {
	var out []located
	var walk func(path string, n *yaml.Node)
	walk = func(path string, n *yaml.Node) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if k.Value == "<<" && k.ShortTag() == "!!merge" {
					walk(path, v)
					continue
				}
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				out = append(out, located{path: p, key: k, val: v})
				walk(p, v)
			}
		case yaml.SequenceNode:
			for i, v := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				out = append(out, located{path: p, val: v})
				walk(p, v)
			}
		}
	}
	walk("", root)
	return out
}

// findKey returns the mapping entry whose key is name on line.
func findKey(ix []located, line int, name string) (located, bool) {
	for _, l := range ix {
		if l.key != nil && l.key.Line == line && l.key.Value == name {
			return l, true
		}
	}
	return located{}, false
}

// findValue returns the value on line whose text is val (yaml shortens
// long values in messages to their first 7 bytes and "..."), or for a list
// or mapping, whose tag is tag. Of several on one line (flow style) it
// returns the innermost, which is the last in index order.
func findValue(ix []located, line int, tag, val string) (located, bool) {
	prefix, cut := strings.CutSuffix(val, "...")
	var found located
	ok := false
	for _, l := range ix {
		if l.val.Line != line {
			continue
		}
		var match bool
		if l.val.Kind == yaml.ScalarNode {
			match = l.val.Value == val || (cut && len(l.val.Value) > 10 && strings.HasPrefix(l.val.Value, prefix))
			match = match && (tag == "" || l.val.ShortTag() == tag)
		} else {
			match = tag != "" && l.val.ShortTag() == tag
		}
		if match {
			found, ok = l, true
		}
	}
	return found, ok
}

// knownKeys maps each config struct type name ("config.Registry") to the
// YAML keys it accepts, for "did you mean" hints.
var knownKeys = sync.OnceValue(func() map[string][]string {
	m := map[string][]string{}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || m[t.String()] != nil {
			return
		}
		keys := []string{}
		m[t.String()] = keys
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			keys = append(keys, name)
			add(f.Type)
		}
		m[t.String()] = keys
	}
	add(reflect.TypeFor[Config]())
	return m
})

// closest returns the candidate within edit distance 2 of s, if any.
func closest(s string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := distance(s, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b, for short strings.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
