package ha

import (
	"context"
	"fmt"
	"time"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// LeaderGranter is the owner's Granter: it asks this node's own Grantor when
// this node leads, and the leader's InternalService otherwise.
type LeaderGranter struct {
	// ID is this director's id.
	ID string
	// Local is this node's grantor (the leader's side, also on followers).
	Local *Grantor
	// Remote returns a client for the current leader, or an error when there
	// is none or it is this node.
	Remote func(ctx context.Context) (raftlbv1.InternalServiceClient, error)
}

// GrantLease implements Granter.
func (l LeaderGranter) GrantLease(ctx context.Context, claims []Claim) (Lease, error) {
	if l.Local != nil && l.Local.IsLeader() {
		return l.Local.Grant(ctx, l.ID, claims)
	}
	c, err := l.Remote(ctx)
	if err != nil {
		return Lease{}, fmt.Errorf("find leader: %w", err)
	}
	resp, err := c.GrantLease(ctx, &raftlbv1.GrantLeaseRequest{DirectorId: l.ID, Claims: ClaimsToProto(claims)})
	if err != nil {
		return Lease{}, fmt.Errorf("request lease: %w", err)
	}
	return Lease{
		Granted:  ClaimsFromProto(resp.GetGranted()),
		Release:  ClaimsFromProto(resp.GetRelease()),
		Duration: time.Duration(resp.GetDurationMs()) * time.Millisecond,
	}, nil
}

// ReleaseLease implements Granter.
func (l LeaderGranter) ReleaseLease(ctx context.Context, claims []Claim, leaving bool) error {
	if l.Local != nil && l.Local.IsLeader() {
		return l.Local.Release(ctx, l.ID, claims, leaving)
	}
	c, err := l.Remote(ctx)
	if err != nil {
		return fmt.Errorf("find leader: %w", err)
	}
	_, err = c.ReleaseLease(ctx, &raftlbv1.ReleaseLeaseRequest{DirectorId: l.ID, Claims: ClaimsToProto(claims), Leaving: leaving})
	if err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}
