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

// GrantLease extends the calling director's address leases (the leader only;
// never forwarded: a lease is only as good as the leader's own quorum check).
func (s *internalService) GrantLease(ctx context.Context, req *raftlbv1.GrantLeaseRequest) (*raftlbv1.GrantLeaseResponse, error) {
	if err := checkLeaseCaller(ctx, req.GetDirectorId(), s.d.cfg.Insecure); err != nil {
		return nil, err
	}
	return s.d.ha.g.HandleGrantLease(ctx, req)
}

// ReleaseLease records that the calling director handed its addresses over.
func (s *internalService) ReleaseLease(ctx context.Context, req *raftlbv1.ReleaseLeaseRequest) (*raftlbv1.ReleaseLeaseResponse, error) {
	if err := checkLeaseCaller(ctx, req.GetDirectorId(), s.d.cfg.Insecure); err != nil {
		return nil, err
	}
	return s.d.ha.g.HandleReleaseLease(ctx, req)
}
