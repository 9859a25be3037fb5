package server

import (
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/raftlb/raftlb/server/fsm"
)

// appliedFSM is the state machine as Raft sees it, recording the index of
// the last entry it has applied. Raft's own AppliedIndex moves when entries
// are handed to the FSM goroutine, before they are applied, so it cannot
// promise read-your-writes. Only Raft's FSM goroutine writes the index.
type appliedFSM struct {
	*fsm.FSM
	index atomic.Uint64
}

var _ raft.BatchingFSM = (*appliedFSM)(nil)

func (a *appliedFSM) Apply(l *raft.Log) any {
	r := a.FSM.Apply(l)
	a.index.Store(l.Index)
	return r
}

func (a *appliedFSM) ApplyBatch(logs []*raft.Log) []any {
	r := a.FSM.ApplyBatch(logs)
	if n := len(logs); n > 0 {
		a.index.Store(logs[n-1].Index)
	}
	return r
}
