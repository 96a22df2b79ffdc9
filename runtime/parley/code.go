package parley

import (
	"fmt"
	"strconv"
	"strings"
)

// Code is a status code. The numbers are gRPC's and the names Connect's, so
// errors cross from Parley to gRPC and Connect services and back unchanged.
type Code uint32

const (
	// CodeCanceled means the caller cancelled the call.
	CodeCanceled Code = 1
	// CodeUnknown means the error carried no code.
	CodeUnknown Code = 2
	// CodeInvalidArgument means the request is malformed, whatever the
	// state of the system (an undecodable payload, a bad field).
	CodeInvalidArgument Code = 3
	// CodeDeadlineExceeded means the call's deadline passed before it
	// completed.
	CodeDeadlineExceeded Code = 4
	// CodeNotFound means a requested entity does not exist.
	CodeNotFound Code = 5
	// CodeAlreadyExists means an entity the call tried to create exists.
	CodeAlreadyExists Code = 6
	// CodePermissionDenied means the caller may not do this.
	CodePermissionDenied Code = 7
	// CodeResourceExhausted means a limit was reached (in-flight calls,
	// open streams, a quota).
	CodeResourceExhausted Code = 8
	// CodeFailedPrecondition means the system is not in a state the call
	// needs.
	CodeFailedPrecondition Code = 9
	// CodeAborted means the call was aborted, typically by a concurrency
	// conflict.
	CodeAborted Code = 10
	// CodeOutOfRange means the call went past a valid range.
	CodeOutOfRange Code = 11
	// CodeUnimplemented means the peer does not implement the method.
	CodeUnimplemented Code = 12
	// CodeInternal means an invariant broke (a handler panicked).
	CodeInternal Code = 13
	// CodeUnavailable means the service is unavailable for now (shutting
	// down, the socket closed); the call may be retried.
	CodeUnavailable Code = 14
	// CodeDataLoss means unrecoverable data loss or corruption.
	CodeDataLoss Code = 15
	// CodeUnauthenticated means the caller has no valid credentials.
	CodeUnauthenticated Code = 16

	minCode = CodeCanceled
	maxCode = CodeUnauthenticated
)

var codeNames = [...]string{
	CodeCanceled:           "canceled",
	CodeUnknown:            "unknown",
	CodeInvalidArgument:    "invalid_argument",
	CodeDeadlineExceeded:   "deadline_exceeded",
	CodeNotFound:           "not_found",
	CodeAlreadyExists:      "already_exists",
	CodePermissionDenied:   "permission_denied",
	CodeResourceExhausted:  "resource_exhausted",
	CodeFailedPrecondition: "failed_precondition",
	CodeAborted:            "aborted",
	CodeOutOfRange:         "out_of_range",
	CodeUnimplemented:      "unimplemented",
	CodeInternal:           "internal",
	CodeUnavailable:        "unavailable",
	CodeDataLoss:           "data_loss",
	CodeUnauthenticated:    "unauthenticated",
}

// String returns the code's Connect name, such as "deadline_exceeded".
func (c Code) String() string {
	if c >= minCode && c <= maxCode {
		return codeNames[c]
	}
	return "code_" + strconv.FormatUint(uint64(c), 10)
}

// MarshalText implements encoding.TextMarshaler.
func (c Code) MarshalText() ([]byte, error) {
	return []byte(c.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler; it accepts the names
// String returns.
func (c *Code) UnmarshalText(b []byte) error {
	s := string(b)
	for code := minCode; code <= maxCode; code++ {
		if codeNames[code] == s {
			*c = code
			return nil
		}
	}
	if n, ok := strings.CutPrefix(s, "code_"); ok {
		if v, err := strconv.ParseUint(n, 10, 32); err == nil {
			*c = Code(v)
			return nil
		}
	}
	return fmt.Errorf("parley: invalid code %q", s)
}
