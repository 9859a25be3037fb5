package server

import (
	"context"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// connectionService answers Unimplemented until the dataplane is wired: the
// live table and its flush belong to the packet path.
type connectionService struct {
	raftlbv1.UnimplementedConnectionServiceServer
	d *Director
}

func (s *connectionService) ListConnections(context.Context, *raftlbv1.ListConnectionsRequest) (*raftlbv1.ListConnectionsResponse, error) {
	return nil, notImplemented("list connections", "the dataplane")
}

func (s *connectionService) FlushConnections(context.Context, *raftlbv1.FlushConnectionsRequest) (*raftlbv1.FlushConnectionsResponse, error) {
	return nil, notImplemented("flush connections", "the dataplane")
}
