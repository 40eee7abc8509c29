package policytest

import (
	"errors"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

var (
	// ErrUsage is wrapped by errors of what the caller asked for: a path
	// that does not exist, a bad glob or regular expression, nothing to run.
	// Commands exit 2 on it.
	ErrUsage = errors.New("usage")
	// ErrFixture is wrapped by errors of a fixture folder that cannot be
	// run at all: a fixture.yaml that does not parse or names unknown
	// fields, a tenancy file that is missing or breaks an invariant, a token
	// that cannot be minted as asked. Commands exit 2 on it.
	ErrFixture = errors.New("invalid fixture")
	// ErrInput is wrapped by errors of eval's --input or --data file.
	ErrInput = errors.New("invalid input")
)

// usageError is an ErrUsage whose message does not repeat "usage".
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Unwrap() error { return ErrUsage }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// CompileError is returned when policies do not parse or compile. Each
// error carries its file:line:col location when OPA gives one.
type CompileError struct {
	Errors ast.Errors
}

// Error lists the errors, one per line, as "file:line:col: message".
func (e *CompileError) Error() string {
	return strings.Join(FormatErrors(e.Errors), "\n")
}

// FormatErrors renders OPA errors as "file:line:col: message" lines (with
// indented detail lines, e.g. the types of a type error).
func FormatErrors(errs ast.Errors) []string {
	var out []string
	for _, e := range errs {
		var b strings.Builder
		if l := e.Location; l != nil {
			switch {
			case l.File != "" && l.Col > 0:
				fmt.Fprintf(&b, "%s:%d:%d: ", l.File, l.Row, l.Col)
			case l.File != "":
				fmt.Fprintf(&b, "%s:%d: ", l.File, l.Row)
			default:
				fmt.Fprintf(&b, "%d:%d: ", l.Row, l.Col)
			}
		}
		b.WriteString(e.Message)
		if e.Code != "" {
			fmt.Fprintf(&b, " (%s)", e.Code)
		}
		if e.Details != nil {
			for _, line := range e.Details.Lines() {
				b.WriteString("\n\t")
				b.WriteString(line)
			}
		}
		out = append(out, b.String())
	}
	return out
}

// compileError wraps OPA errors (ast.Errors or a single *ast.Error) into a
// *CompileError; other errors are returned as they are.
func compileError(err error) error {
	var aes ast.Errors
	if errors.As(err, &aes) {
		return &CompileError{Errors: aes}
	}
	var ae *ast.Error
	if errors.As(err, &ae) {
		return &CompileError{Errors: ast.Errors{ae}}
	}
	return err
}
