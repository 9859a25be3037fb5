package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/ha"
	"github.com/raftlb/raftlb/server/pki"
)

// Sentinel errors of the director. Handlers return them (wrapped); toStatus
// turns them into gRPC codes.
var (
	// ErrNotLeader: this director is not the Raft leader and may not forward
	// (the request was already forwarded once).
	ErrNotLeader = errors.New("not the raft leader")
	// ErrNoLeader: no leader is known, or it could not be reached in time.
	ErrNoLeader = errors.New("no raft leader")
	// ErrOutcomeUnknown: the leader lost leadership or the connection after a
	// write was proposed; it may or may not be committed.
	ErrOutcomeUnknown = errors.New("outcome unknown: leadership changed while the write was in flight")
	// ErrNotImplemented: the RPC arrives with a later part of the system.
	ErrNotImplemented = errors.New("not implemented yet")
	// ErrPermissionDenied: the caller's role may not make this call.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnauthenticated: the caller presented no usable certificate.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrShuttingDown: the director is stopping.
	ErrShuttingDown = errors.New("director is shutting down")
	// ErrNoDataplane: the call reads this director's packet path, and it has
	// none (a witness, or a director run without --iface).
	ErrNoDataplane = errors.New("no dataplane on this director")
)

// errorDomain and reasonNotLeader mark a NOT_LEADER status so the forwarder
// can tell "nothing happened, try the new leader" from any other failure.
const (
	errorDomain     = "raftlb.v1"
	reasonNotLeader = "NOT_LEADER"
)

// toStatus is the one place where errors become gRPC statuses. Nothing
// reaches a client as codes.Unknown.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var fe *fsm.Error
	switch {
	case errors.As(err, &fe):
		return status.Error(fe.Code, err.Error())
	case errors.Is(err, ErrNotLeader), errors.Is(err, raft.ErrNotLeader), errors.Is(err, ha.ErrNotLeader):
		st := status.New(codes.Unavailable, err.Error())
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reasonNotLeader, Domain: errorDomain}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrShuttingDown), errors.Is(err, raft.ErrRaftShutdown),
		errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrOutcomeUnknown), errors.Is(err, raft.ErrLeadershipLost):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ha.ErrUnknownAddress):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ha.ErrNoTarget):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrNoDataplane):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrNotImplemented):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, ErrPermissionDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrUnauthenticated), errors.Is(err, pki.ErrNoCertificate), errors.Is(err, pki.ErrUnknownRole):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	// A status from a forwarded call passes through unchanged.
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// isNotLeader reports whether a status from another director says it is not
// the leader, so the request had no effect there.
func isNotLeader(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain && info.GetReason() == reasonNotLeader {
			return true
		}
	}
	return false
}

// notImplemented builds the error of an RPC whose behaviour comes later.
func notImplemented(what, until string) error {
	return fmt.Errorf("%s: %w (arrives with %s)", what, ErrNotImplemented, until)
}
