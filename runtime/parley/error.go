package parley

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Error is a call's failure as it crosses the wire: a code, a message for
// developers and optional typed details. Handlers return one to choose the
// code a caller sees; any other error reaches the caller as CodeUnknown.
// Read one with errors.As or CodeOf.
type Error struct {
	code    Code
	message string
	details []*anypb.Any
	wrapped error
}

// NewError returns an error with the given code and message.
func NewError(code Code, message string) *Error {
	return &Error{code: code, message: message}
}

// Errorf returns an error with the given code and a formatted message. A %w
// verb wraps its operand, which errors.Is and errors.As then see; the
// wrapped error stays on this side of the wire.
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{code: code, message: err.Error(), wrapped: errors.Unwrap(err)}
}

// Code returns the error's code.
func (e *Error) Code() Code { return e.code }

// Message returns the error's message, without the code.
func (e *Error) Message() string { return e.message }

// Error returns "code: message".
func (e *Error) Error() string {
	if e.message == "" {
		return e.code.String()
	}
	return e.code.String() + ": " + e.message
}

// Unwrap returns the error Errorf wrapped, if any.
func (e *Error) Unwrap() error { return e.wrapped }

// Details returns the error's details, undecoded.
func (e *Error) Details() []*anypb.Any { return e.details }

// AddDetail attaches a typed detail the caller can read with Details.
func (e *Error) AddDetail(m proto.Message) error {
	a, err := anypb.New(m)
	if err != nil {
		return fmt.Errorf("parley: packing error detail: %w", err)
	}
	e.details = append(e.details, a)
	return nil
}

// CodeOf returns the code of err: the code of an *Error in its chain,
// CodeDeadlineExceeded or CodeCanceled for the context errors, CodeUnknown
// for any other error. CodeOf(nil) is 0, which is no code.
func CodeOf(err error) Code {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) {
		return e.code
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	}
	return CodeUnknown
}

// asError converts any error to the *Error that goes on the wire.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	code := CodeOf(err)
	return &Error{code: code, message: err.Error(), wrapped: err}
}
