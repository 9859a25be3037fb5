package server

import (
	"context"
	"fmt"

	"github.com/hashicorp/raft"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
)

// internalService is the leader's end of write forwarding. Only director
// certificates reach it (authorizer); it never forwards again.
type internalService struct {
	raftlbv1.UnimplementedInternalServiceServer
	d *Director
}

// Apply commits a command forwarded by a follower. The state machine's
// verdict travels back in the response; only "not the leader" and transport
// trouble are errors, so the follower can tell a refusal from a retry.
func (s *internalService) Apply(ctx context.Context, req *raftlbv1.ApplyRequest) (*raftlbv1.ApplyResponse, error) {
	if err := fsm.ValidateCommand(req.GetCommand()); err != nil {
		return nil, err
	}
	if s.d.raft.State() != raft.Leader {
		_, leader := s.d.raft.LeaderWithID()
		return nil, fmt.Errorf("forwarded apply (leader is %q): %w", leader, ErrNotLeader)
	}
	return s.d.applyLocal(ctx, req.GetCommand())
}
