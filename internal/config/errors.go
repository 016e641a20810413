package config

import (
	"errors"
	"strconv"
	"strings"
)

// Error kinds returned by this package; match them with errors.Is.
var (
	// ErrEmpty means the configuration holds no YAML document at all.
	ErrEmpty = errors.New("config is empty (write at least \"version: 1\")")
	// ErrMultipleDocuments means the file holds more than one YAML document.
	ErrMultipleDocuments = errors.New("config must be a single YAML document")
	// ErrDecode marks YAML that does not fit the config: syntax errors,
	// unknown keys and values of the wrong type.
	ErrDecode = errors.New("cannot decode config")
	// ErrInvalid marks a value that decodes but is not allowed.
	ErrInvalid = errors.New("invalid config")
	// ErrSecret means a connector's password could not be read.
	ErrSecret = errors.New("cannot read secret")
)

// FieldError is one problem in a configuration: where it is, the offending
// value and what is wrong with it. Parse and Validate return every problem
// found, joined with errors.Join; errors.Is matches ErrDecode or ErrInvalid.
type FieldError struct {
	Line  int    // line in the YAML file; 0 when not known
	Path  string // field path such as registries[1].name; empty for the whole file
	Value string // the offending value, quoted and redacted; empty when none applies
	Msg   string // what is wrong
	Kind  error  // ErrDecode or ErrInvalid
}

// Error formats the problem as "line N: path: value: message".
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	if e.Value != "" {
		b.WriteString(e.Value)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the error kind, so errors.Is(err, ErrInvalid) works.
func (e *FieldError) Unwrap() error { return e.Kind }
