package ha

import "errors"

// Sentinel errors of the HA components.
var (
	// ErrNotLeader means this node is not the Raft leader, or has not yet
	// finished establishing its leadership (the barrier of its term), so it
	// may neither grant leases nor reassign addresses.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrUnknownAddress means an address is not in the replicated state.
	ErrUnknownAddress = errors.New("unknown address")
	// ErrNoTarget means no director may take an address: the target is not
	// a full director, is a witness, or has not contacted the leader lately.
	ErrNoTarget = errors.New("no director may take the address")
	// ErrClosed means a component has stopped.
	ErrClosed = errors.New("closed")
)
