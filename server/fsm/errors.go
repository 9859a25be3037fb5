package fsm

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// Error is a rejected command: a gRPC code, the request field at fault (as a
// path in the request, e.g. "service.key.vip"; empty when no single field is)
// and the reason. It implements GRPCStatus, so a gRPC handler may return it as is.
type Error struct {
	Code   codes.Code
	Field  string
	Reason string
}

// Sentinel errors, one per code the state machine uses. errors.Is matches any
// *Error with the same code, so errors.Is(err, ErrNotFound) works on errors
// built by this package and on those rebuilt from a Result.
var (
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument, Reason: "invalid argument"}
	ErrNotFound           = &Error{Code: codes.NotFound, Reason: "not found"}
	ErrAlreadyExists      = &Error{Code: codes.AlreadyExists, Reason: "already exists"}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition, Reason: "failed precondition"}
	ErrInternal           = &Error{Code: codes.Internal, Reason: "internal error"}
)

func (e *Error) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// GRPCStatus maps the error to a gRPC status with the same code and message.
func (e *Error) GRPCStatus() *status.Status {
	return status.New(e.Code, e.Error())
}

func newError(code codes.Code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Reason: fmt.Sprintf(format, args...)}
}

func invalid(field, format string, args ...any) *Error {
	return newError(codes.InvalidArgument, field, format, args...)
}

func notFound(field, format string, args ...any) *Error {
	return newError(codes.NotFound, field, format, args...)
}

func alreadyExists(field, format string, args ...any) *Error {
	return newError(codes.AlreadyExists, field, format, args...)
}

func precondition(field, format string, args ...any) *Error {
	return newError(codes.FailedPrecondition, field, format, args...)
}

// ToResult turns an error into a Result: nil is OK, an *Error keeps its code,
// anything else is Internal.
func ToResult(err error) *raftlbv1.Result {
	if err == nil {
		return &raftlbv1.Result{}
	}
	code := codes.Internal
	var e *Error
	if errors.As(err, &e) {
		code = e.Code
	}
	return &raftlbv1.Result{Code: uint32(code), Message: err.Error()}
}

// ResultError returns nil for an OK result and an *Error otherwise. A nil
// result is Internal: Apply never returns one.
func ResultError(r *raftlbv1.Result) error {
	if r == nil {
		return newError(codes.Internal, "", "state machine returned no result")
	}
	if r.GetCode() == uint32(codes.OK) {
		return nil
	}
	return &Error{Code: codes.Code(r.GetCode()), Reason: r.GetMessage()}
}

// ResultOf interprets what raft's ApplyFuture.Response returns for a command
// applied by an FSM: the Result, and ResultError of it.
func ResultOf(resp any) (*raftlbv1.Result, error) {
	r, ok := resp.(*raftlbv1.Result)
	if !ok || r == nil {
		return nil, newError(codes.Internal, "", "state machine returned %T, not a result", resp)
	}
	return r, ResultError(r)
}
