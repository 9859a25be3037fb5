package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
)

// clusterService adapts ClusterService to Raft membership and the state machine.
type clusterService struct {
	raftlbv1.UnimplementedClusterServiceServer
	d *Director
}

func (s *clusterService) GetStatus(ctx context.Context, req *raftlbv1.GetStatusRequest) (*raftlbv1.GetStatusResponse, error) {
	return read(ctx, s.d, req.GetConsistent(), req, func() (*raftlbv1.GetStatusResponse, error) {
		return s.d.status(ctx)
	})
}

// status describes the cluster as this director sees it.
func (d *Director) status(ctx context.Context) (*raftlbv1.GetStatusResponse, error) {
	_, leader := d.raft.LeaderWithID()
	counts := d.fsm.Counts()
	resp := &raftlbv1.GetStatusResponse{
		Id:              d.cfg.ID,
		RaftState:       d.raft.State().String(),
		Term:            d.raft.CurrentTerm(),
		LeaderId:        string(leader),
		AppliedIndex:    d.raft.AppliedIndex(),
		CommitIndex:     d.raft.CommitIndex(),
		Generation:      counts.Generation,
		Addresses:       d.fsm.Addresses(),
		ServiceCount:    uint32(counts.Services),
		RealserverCount: uint32(counts.Realservers),
		ConnectionCount: uint64(counts.Connections),
	}
	d.ha.status(resp)
	byID := map[string]*raftlbv1.DirectorStatus{}
	get := func(id string) *raftlbv1.DirectorStatus {
		ds, ok := byID[id]
		if !ok {
			ds = &raftlbv1.DirectorStatus{Director: &raftlbv1.Director{Id: id}, Leader: id == string(leader)}
			byID[id] = ds
		}
		return ds
	}
	for _, dir := range d.fsm.Directors() {
		get(dir.GetId()).Director = dir
	}
	for id, m := range d.gossip.members() {
		ds := get(id)
		ds.GossipState = m.State
		if ds.GetDirector().GetApiAddress() == "" && m.Director != nil {
			ds.Director = m.Director
		}
	}
	cf := d.raft.GetConfiguration()
	if err := waitFuture(ctx, cf); err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", err)
	}
	for _, srv := range cf.Configuration().Servers {
		ds := get(string(srv.ID))
		ds.Suffrage = srv.Suffrage.String()
		if ds.GetDirector().GetRaftAddress() == "" {
			ds.Director.RaftAddress = string(srv.Address)
		}
	}
	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		resp.Directors = append(resp.Directors, byID[id])
	}
	return resp, nil
}

// JoinDirector adds a voter (on the leader) and records its addresses.
func (s *clusterService) JoinDirector(ctx context.Context, req *raftlbv1.JoinDirectorRequest) (*raftlbv1.JoinDirectorResponse, error) {
	dir := req.GetDirector()
	upsert := &raftlbv1.Command{Op: &raftlbv1.Command_UpsertDirector{UpsertDirector: &raftlbv1.UpsertDirector{Director: dir}}}
	if err := fsm.ValidateCommand(upsert); err != nil {
		return nil, err
	}
	for field, v := range map[string]string{"director.raft_address": dir.GetRaftAddress(), "director.api_address": dir.GetApiAddress()} {
		if v == "" {
			return nil, &fsm.Error{Code: codes.InvalidArgument, Field: field, Reason: "required to join"}
		}
	}
	return forwardUnary(ctx, s.d, false, req, func(ctx context.Context) (*raftlbv1.JoinDirectorResponse, error) {
		f := s.d.raft.AddVoter(raft.ServerID(dir.GetId()), raft.ServerAddress(dir.GetRaftAddress()), 0, s.d.cfg.WriteTimeout)
		if err := waitFuture(ctx, f); err != nil {
			return nil, fmt.Errorf("add voter %s: %w", dir.GetId(), err)
		}
		if _, err := s.d.propose(ctx, upsert); err != nil {
			return nil, err
		}
		return &raftlbv1.JoinDirectorResponse{}, nil
	})
}

// RemoveDirector forgets a director's addresses, then removes it from Raft
// (in this order: a leader removing itself stops being able to propose).
func (s *clusterService) RemoveDirector(ctx context.Context, req *raftlbv1.RemoveDirectorRequest) (*raftlbv1.RemoveDirectorResponse, error) {
	cmd := &raftlbv1.Command{Op: &raftlbv1.Command_RemoveDirector{RemoveDirector: req}}
	if err := fsm.ValidateCommand(cmd); err != nil {
		return nil, err
	}
	return forwardUnary(ctx, s.d, false, req, func(ctx context.Context) (*raftlbv1.RemoveDirectorResponse, error) {
		cf := s.d.raft.GetConfiguration()
		if err := waitFuture(ctx, cf); err != nil {
			return nil, fmt.Errorf("read raft configuration: %w", err)
		}
		inRaft := slices.ContainsFunc(cf.Configuration().Servers, func(srv raft.Server) bool {
			return string(srv.ID) == req.GetId()
		})
		_, err := s.d.propose(ctx, cmd)
		if errors.Is(err, fsm.ErrNotFound) && inRaft {
			err = nil // Never announced; still a voter to remove.
		}
		if err != nil {
			return nil, err
		}
		if inRaft {
			if err := waitFuture(ctx, s.d.raft.RemoveServer(raft.ServerID(req.GetId()), 0, s.d.cfg.WriteTimeout)); err != nil {
				return nil, fmt.Errorf("remove server %s: %w", req.GetId(), err)
			}
		}
		return &raftlbv1.RemoveDirectorResponse{}, nil
	})
}

func (s *clusterService) SetAddress(ctx context.Context, req *raftlbv1.SetAddressRequest) (*raftlbv1.SetAddressResponse, error) {
	res, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: req}})
	if err != nil {
		return nil, err
	}
	return &raftlbv1.SetAddressResponse{Address: res.GetAddress()}, nil
}

func (s *clusterService) ListAddresses(ctx context.Context, req *raftlbv1.ListAddressesRequest) (*raftlbv1.ListAddressesResponse, error) {
	return read(ctx, s.d, req.GetConsistent(), req, func() (*raftlbv1.ListAddressesResponse, error) {
		as := s.d.fsm.Addresses()
		s.d.ha.leaseRemaining(as)
		return &raftlbv1.ListAddressesResponse{Addresses: as}, nil
	})
}

// MoveVip hands a VIP (a NAT VIP with its whole group) over to another
// director: on the leader, which asks the owner to stop answering, flush
// its connection sync and release, and commits the new owner then (or once
// the old lease has surely run out).
func (s *clusterService) MoveVip(ctx context.Context, req *raftlbv1.MoveVipRequest) (*raftlbv1.MoveVipResponse, error) {
	addr, err := netip.ParseAddr(req.GetVip())
	if err != nil || !addr.Is4() {
		return nil, &fsm.Error{Code: codes.InvalidArgument, Field: "vip", Reason: fmt.Sprintf("%q is not an IPv4 address", req.GetVip())}
	}
	if req.GetTo() == "" {
		return nil, &fsm.Error{Code: codes.InvalidArgument, Field: "to", Reason: "required"}
	}
	return forwardUnary(ctx, s.d, false, req, func(ctx context.Context) (*raftlbv1.MoveVipResponse, error) {
		a, err := s.d.ha.moveVIP(ctx, addr, req.GetTo())
		if err != nil {
			return nil, err
		}
		return &raftlbv1.MoveVipResponse{Address: a}, nil
	})
}
