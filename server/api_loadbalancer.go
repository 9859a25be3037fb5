package server

import (
	"context"

	"google.golang.org/grpc"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// lbService adapts LoadBalancerService to commands and state reads.
type lbService struct {
	raftlbv1.UnimplementedLoadBalancerServiceServer
	d *Director
}

func (s *lbService) CreateService(ctx context.Context, req *raftlbv1.CreateServiceRequest) (*raftlbv1.CreateServiceResponse, error) {
	res, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: req}})
	if err != nil {
		return nil, err
	}
	return &raftlbv1.CreateServiceResponse{Service: res.GetService()}, nil
}

func (s *lbService) UpdateService(ctx context.Context, req *raftlbv1.UpdateServiceRequest) (*raftlbv1.UpdateServiceResponse, error) {
	res, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_UpdateService{UpdateService: req}})
	if err != nil {
		return nil, err
	}
	return &raftlbv1.UpdateServiceResponse{Service: res.GetService()}, nil
}

func (s *lbService) DeleteService(ctx context.Context, req *raftlbv1.DeleteServiceRequest) (*raftlbv1.DeleteServiceResponse, error) {
	if _, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_DeleteService{DeleteService: req}}); err != nil {
		return nil, err
	}
	return &raftlbv1.DeleteServiceResponse{}, nil
}

func (s *lbService) GetService(ctx context.Context, req *raftlbv1.GetServiceRequest) (*raftlbv1.GetServiceResponse, error) {
	return read(ctx, s.d, req.GetConsistent(), req, func() (*raftlbv1.GetServiceResponse, error) {
		svc, err := s.d.fsm.Service(req.GetKey())
		if err != nil {
			return nil, err
		}
		s.d.addStats(svc)
		return &raftlbv1.GetServiceResponse{Service: svc}, nil
	})
}

func (s *lbService) ListServices(ctx context.Context, req *raftlbv1.ListServicesRequest) (*raftlbv1.ListServicesResponse, error) {
	return read(ctx, s.d, req.GetConsistent(), req, func() (*raftlbv1.ListServicesResponse, error) {
		svcs, gen := s.d.fsm.ServicesAt()
		s.d.addStats(svcs...)
		return &raftlbv1.ListServicesResponse{Services: svcs, Generation: gen}, nil
	})
}

// WatchServices sends the list now (unless not newer than after_generation)
// and after every change, until the client goes away or the director stops.
func (s *lbService) WatchServices(req *raftlbv1.WatchServicesRequest, stream grpc.ServerStreamingServer[raftlbv1.WatchServicesResponse]) error {
	after := req.GetAfterGeneration()
	first := true
	return s.d.watch(stream.Context(), func() error {
		svcs, gen := s.d.fsm.ServicesAt()
		if gen <= after && !(first && after == 0) {
			return nil
		}
		first = false
		after = gen
		return stream.Send(&raftlbv1.WatchServicesResponse{Services: svcs, Generation: gen})
	})
}

func (s *lbService) AddRealserver(ctx context.Context, req *raftlbv1.AddRealserverRequest) (*raftlbv1.AddRealserverResponse, error) {
	res, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_AddRealserver{AddRealserver: req}})
	if err != nil {
		return nil, err
	}
	return &raftlbv1.AddRealserverResponse{Realserver: res.GetRealserver()}, nil
}

func (s *lbService) UpdateRealserver(ctx context.Context, req *raftlbv1.UpdateRealserverRequest) (*raftlbv1.UpdateRealserverResponse, error) {
	res, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_UpdateRealserver{UpdateRealserver: req}})
	if err != nil {
		return nil, err
	}
	return &raftlbv1.UpdateRealserverResponse{Realserver: res.GetRealserver()}, nil
}

func (s *lbService) RemoveRealserver(ctx context.Context, req *raftlbv1.RemoveRealserverRequest) (*raftlbv1.RemoveRealserverResponse, error) {
	if _, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_RemoveRealserver{RemoveRealserver: req}}); err != nil {
		return nil, err
	}
	return &raftlbv1.RemoveRealserverResponse{}, nil
}

func (s *lbService) ListRealservers(ctx context.Context, req *raftlbv1.ListRealserversRequest) (*raftlbv1.ListRealserversResponse, error) {
	return read(ctx, s.d, req.GetConsistent(), req, func() (*raftlbv1.ListRealserversResponse, error) {
		svc, err := s.d.fsm.Service(req.GetService())
		if err != nil {
			return nil, err
		}
		s.d.addStats(svc)
		return &raftlbv1.ListRealserversResponse{Realservers: svc.GetRealservers()}, nil
	})
}

// watch calls send now and after every change of the replicated state
// until ctx ends or the director stops. send decides whether there is
// anything new to say.
func (d *Director) watch(ctx context.Context, send func() error) error {
	for {
		changed := d.fsm.Changed()
		if err := send(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.stopping:
			return ErrShuttingDown
		case <-changed:
		}
	}
}
