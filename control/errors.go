package control

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

var (
	// ErrConfig is wrapped by every configuration problem: Validate's, and
	// New's when a token file is missing, unreadable or empty, or an issuer's
	// keys cannot be loaded.
	ErrConfig = errors.New("invalid control config")
	// ErrInUse is returned by New when another process holds the bbolt file
	// (its lock could not be taken within a second).
	ErrInUse = errors.New("data file in use by another process")
	// ErrClosed is returned by Listen and Serve after Close.
	ErrClosed = errors.New("control server closed")
)

// Error codes the API answers with, besides the tenancy.Code* ones
// (malformed, invalid, not_found, conflict).
const (
	CodeUnauthorized = "unauthorized" // 401: no token, or one that is not accepted
	CodeForbidden    = "forbidden"    // 403: the token may not do this
	CodeTooLarge     = "too_large"    // 413: the body exceeds max_entity_bytes or max_body_bytes
	CodeGone         = "gone"         // 410: since is older than the retained history, or another history (epoch, hash)
	CodeAhead        = "ahead"        // 409: since is newer than the current revision
	CodeBusy         = "busy"         // 503: body_budget_bytes is in use by other requests' bodies, or max_streams sync streams are open (retry later)
	CodeInternal     = "internal"     // 500: a storage failure (logged)
	CodeUnavailable  = "unavailable"  // 503: the etcd store cannot be reached, or the write's outcome is not known yet (retry)
)

// apiError is an answer other than a tenancy.Error.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func unauthorized(format string, args ...any) *apiError {
	return errorf(http.StatusUnauthorized, CodeUnauthorized, format, args...)
}

func forbidden(format string, args ...any) *apiError {
	return errorf(http.StatusForbidden, CodeForbidden, format, args...)
}

func badRequest(format string, args ...any) *apiError {
	return errorf(http.StatusBadRequest, tenancy.CodeMalformed, format, args...)
}

func notFound(format string, args ...any) *apiError {
	return errorf(http.StatusNotFound, tenancy.CodeNotFound, format, args...)
}
