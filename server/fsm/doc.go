// Package fsm owns raftlb's replicated state machine: the desired state of the
// cluster (virtual services, realservers, directors, announced addresses and
// their owners, agents, health verdicts) and the replicated connection table.
//
// Every Raft log entry is a protobuf [raftlbv1.Command]. [FSM.Apply] decodes it,
// re-runs [ValidateCommand], checks it against the current state and either
// applies all of it or none of it, returning a [raftlbv1.Result] whose code is
// a gRPC code. Apply is deterministic: it reads no clock (time arrives in
// Command.unix_nano), does no I/O and never lets map order reach its outputs,
// so every director that applies the same log holds byte-identical snapshots.
//
// The gRPC layer calls [ValidateCommand] before proposing, so a bad request is
// answered with InvalidArgument and never reaches the log; [Error] carries the
// gRPC code, and [ToResult], [ResultError] and [ResultOf] convert between errors
// and results in one place.
//
// Reads ([FSM.Services], [FSM.AgentConfig], ...) return deep copies and are safe
// from any goroutine; [FSM.Changed] lets watchers wait for the next change of
// the configuration generation.
package fsm
