package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// agentService adapts AgentService. The authorizer has already checked that
// an agent speaks only for its own id and registers only its own addresses.
type agentService struct {
	raftlbv1.UnimplementedAgentServiceServer
	d *Director
}

func (s *agentService) Register(ctx context.Context, req *raftlbv1.RegisterRequest) (*raftlbv1.RegisterResponse, error) {
	res, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_RegisterAgent{RegisterAgent: req}})
	if err != nil {
		return nil, err
	}
	return &raftlbv1.RegisterResponse{Generation: res.GetGeneration()}, nil
}

// WatchConfig streams the agent's desired configuration now and whenever it
// changes (the replicated generation moves on every configuration change,
// but the agent is only told when its own view differs).
func (s *agentService) WatchConfig(req *raftlbv1.WatchConfigRequest, stream grpc.ServerStreamingServer[raftlbv1.WatchConfigResponse]) error {
	after := req.GetAfterGeneration()
	var last *raftlbv1.WatchConfigResponse
	return s.d.watch(stream.Context(), func() error {
		cfg, err := s.d.fsm.AgentConfig(req.GetId())
		if err != nil {
			return err
		}
		if after != 0 && cfg.GetGeneration() <= after {
			return nil
		}
		if last != nil && sameAgentConfig(last, cfg) {
			return nil
		}
		last = cfg
		after = 0
		return stream.Send(cfg)
	})
}

func (s *agentService) ReportStatus(ctx context.Context, req *raftlbv1.ReportStatusRequest) (*raftlbv1.ReportStatusResponse, error) {
	if _, err := s.d.propose(ctx, &raftlbv1.Command{Op: &raftlbv1.Command_ReportAgentStatus{ReportAgentStatus: req}}); err != nil {
		return nil, err
	}
	return &raftlbv1.ReportStatusResponse{}, nil
}

func (s *agentService) ListAgents(context.Context, *raftlbv1.ListAgentsRequest) (*raftlbv1.ListAgentsResponse, error) {
	return &raftlbv1.ListAgentsResponse{Agents: s.d.fsm.Agents()}, nil
}

// sameAgentConfig compares two configurations apart from their generation.
func sameAgentConfig(a, b *raftlbv1.WatchConfigResponse) bool {
	a, b = proto.CloneOf(a), proto.CloneOf(b)
	a.Generation, b.Generation = 0, 0
	return proto.Equal(a, b)
}
