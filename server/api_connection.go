package server

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"google.golang.org/grpc/codes"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
)

// defaultConnLimit is ListConnections' limit when the request sets none.
const defaultConnLimit = 10000

// connectionService serves the answering director's live connection table
// and the cluster-wide flush.
type connectionService struct {
	raftlbv1.UnimplementedConnectionServiceServer
	d *Director
}

func (s *connectionService) ListConnections(_ context.Context, req *raftlbv1.ListConnectionsRequest) (*raftlbv1.ListConnectionsResponse, error) {
	vip, err := optionalVIP(req.GetVip())
	if err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = defaultConnLimit
	}
	conns, truncated, err := s.d.connections(vip, limit)
	if err != nil {
		return nil, err
	}
	return &raftlbv1.ListConnectionsResponse{Connections: conns, Truncated: truncated}, nil
}

func (s *connectionService) FlushConnections(ctx context.Context, req *raftlbv1.FlushConnectionsRequest) (*raftlbv1.FlushConnectionsResponse, error) {
	if _, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_FlushConnections{FlushConnections: req}}); err != nil {
		return nil, err
	}
	return &raftlbv1.FlushConnectionsResponse{}, nil
}

// optionalVIP parses a VIP filter; empty means all.
func optionalVIP(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, &fsm.Error{Code: codes.InvalidArgument, Field: "vip", Reason: fmt.Sprintf("%q is not an IPv4 address", s)}
	}
	return a, nil
}

// connections reads this director's live table.
func (d *Director) connections(vip netip.Addr, limit int) ([]*raftlbv1.Connection, bool, error) {
	pp := d.packetPath()
	if pp == nil {
		return nil, false, fmt.Errorf("list connections on %s: %w", d.cfg.ID, ErrNoDataplane)
	}
	return pp.connections(vip, limit, time.Now())
}
