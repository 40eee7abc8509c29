package tenancy

import (
	"errors"
	"fmt"
)

// Error codes, as the control API reports them.
const (
	CodeMalformed = "malformed" // 400: not JSON, or not the expected shape
	CodeInvalid   = "invalid"   // 422: valid JSON, invalid entity
	CodeNotFound  = "not_found" // 404: unknown id
	CodeConflict  = "conflict"  // 409: an invariant or reference is violated
)

// Error is a refused write or an unknown entity.
type Error struct {
	// Status is the HTTP status: 400, 404, 409 or 422.
	Status int
	// Code is one of the Code* constants.
	Code string
	// Msg names the problem: the entity, the field, the value.
	Msg string
}

func (e *Error) Error() string { return e.Msg }

func malformed(format string, args ...any) *Error {
	return &Error{Status: 400, Code: CodeMalformed, Msg: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *Error {
	return &Error{Status: 422, Code: CodeInvalid, Msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) *Error {
	return &Error{Status: 404, Code: CodeNotFound, Msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) *Error {
	return &Error{Status: 409, Code: CodeConflict, Msg: fmt.Sprintf(format, args...)}
}

// ErrNotInitialized is returned when a bbolt file lacks the tenancy buckets.
var ErrNotInitialized = errors.New("tenancy buckets are missing")

// ErrInconsistent is wrapped by Validate's error: the data breaks an
// invariant, or an index disagrees with the entities.
var ErrInconsistent = errors.New("tenancy data is inconsistent")

// IsNotFound reports whether err is a CodeNotFound *Error.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeNotFound
}

// ErrDamaged is wrapped by every error reporting damaged data: a stored
// value whose checksum does not match, or a file that is not what its
// schema says.
var ErrDamaged = errors.New("tenancy data damaged")
