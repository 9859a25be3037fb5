package server

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/pki"
)

// TestAPI runs the request-level checks against one shared 3-voter cluster.
func TestAPI(t *testing.T) {
	c := newTestCluster(t, 3)
	c.nodes[0].metrics = true
	c.startAll()
	leader, _ := c.waitLeader()
	follower := c.follower(leader)

	lb, cl := c.admin(follower)
	existing := tcpService("198.51.100.20", 80)
	createService(t, lb, existing)

	t.Run("validation", func(t *testing.T) { testValidation(t, lb, cl, existing) })
	t.Run("auth", func(t *testing.T) { testAuth(t, c, leader, follower) })
	t.Run("unimplemented", func(t *testing.T) { testUnimplemented(t, c, follower) })
	t.Run("metrics", func(t *testing.T) { testMetrics(t, c.nodes[0]) })
	t.Run("raft refuses non-directors", func(t *testing.T) { testRaftRefuses(t, c, follower) })
}

// testRaftRefuses dials a director's Raft port with an admin certificate:
// the chain is valid, the role is not, so the handshake fails.
func testRaftRefuses(t *testing.T, c *testCluster, n *testNode) {
	tc, err := pki.ClientTLS(filepath.Join(c.tlsDir, "ca.pem"), filepath.Join(c.tlsDir, "admin.pem"), filepath.Join(c.tlsDir, "admin-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = "127.0.0.1"
	conn, err := tls.Dial("tcp", n.cfg.RaftAddr, tc)
	if err != nil {
		t.Fatalf("dial raft: %v (the client side should accept the director's certificate)", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	// TLS 1.3 reports the server's verdict on the client certificate on first read.
	_, err = conn.Read(make([]byte, 1))
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("raft connection with an admin certificate: %v, want a bad certificate alert", err)
	}
}

func testValidation(t *testing.T, lb raftlbv1.LoadBalancerServiceClient, cl raftlbv1.ClusterServiceClient,
	existing *raftlbv1.VirtualService,
) {
	svc := func(mut func(*raftlbv1.VirtualService)) *raftlbv1.CreateServiceRequest {
		s := tcpService("198.51.100.30", 80)
		mut(s)
		return &raftlbv1.CreateServiceRequest{Service: s}
	}
	dr := func(addr string, m raftlbv1.ForwardingMethod) *raftlbv1.Realserver {
		return &raftlbv1.Realserver{Address: addr, Weight: 1, Method: m}
	}
	tests := []struct {
		name  string
		call  func(ctx context.Context) error
		code  codes.Code
		field string
	}{
		{"bad vip", func(ctx context.Context) error {
			_, err := lb.CreateService(ctx, svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "198.51.100.300" }))
			return err
		}, codes.InvalidArgument, "service.key.vip"},
		{"port 0", func(ctx context.Context) error {
			_, err := lb.CreateService(ctx, svc(func(s *raftlbv1.VirtualService) { s.Key.Port = 0 }))
			return err
		}, codes.InvalidArgument, "service.key.port"},
		{"port 70000", func(ctx context.Context) error {
			_, err := lb.CreateService(ctx, svc(func(s *raftlbv1.VirtualService) { s.Key.Port = 70000 }))
			return err
		}, codes.InvalidArgument, "service.key.port"},
		{"unknown scheduler", func(ctx context.Context) error {
			_, err := lb.CreateService(ctx, svc(func(s *raftlbv1.VirtualService) { s.Scheduler = 42 }))
			return err
		}, codes.InvalidArgument, "service.scheduler"},
		{"unknown method", func(ctx context.Context) error {
			_, err := lb.AddRealserver(ctx, &raftlbv1.AddRealserverRequest{Service: existing.GetKey(), Realserver: dr("192.0.2.11", 9)})
			return err
		}, codes.InvalidArgument, "realserver.method"},
		{"realserver for missing service", func(ctx context.Context) error {
			_, err := lb.AddRealserver(ctx, &raftlbv1.AddRealserverRequest{
				Service:    tcpService("198.51.100.99", 80).GetKey(),
				Realserver: dr("192.0.2.11", raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR),
			})
			return err
		}, codes.NotFound, "service"},
		{"duplicate service", func(ctx context.Context) error {
			_, err := lb.CreateService(ctx, &raftlbv1.CreateServiceRequest{Service: existing})
			return err
		}, codes.AlreadyExists, "service"},
		{"join without raft address", func(ctx context.Context) error {
			_, err := cl.JoinDirector(ctx, &raftlbv1.JoinDirectorRequest{Director: &raftlbv1.Director{Id: "d9", ApiAddress: "127.0.0.1:1"}})
			return err
		}, codes.InvalidArgument, "director.raft_address"},
		{"remove unknown director", func(ctx context.Context) error {
			_, err := cl.RemoveDirector(ctx, &raftlbv1.RemoveDirectorRequest{Id: "d9"})
			return err
		}, codes.NotFound, "d9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := generation(t, cl)
			err := tc.call(callCtx(t))
			st := status.Convert(err)
			if st.Code() != tc.code {
				t.Fatalf("code = %v (%v), want %v", st.Code(), err, tc.code)
			}
			if !strings.Contains(st.Message(), tc.field) {
				t.Errorf("message %q does not name %q", st.Message(), tc.field)
			}
			if after := generation(t, cl); after != before {
				t.Errorf("generation moved from %d to %d", before, after)
			}
		})
	}
}

func generation(t *testing.T, cl raftlbv1.ClusterServiceClient) uint64 {
	t.Helper()
	st, err := cl.GetStatus(callCtx(t), &raftlbv1.GetStatusRequest{Consistent: true})
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st.GetGeneration()
}

func testAuth(t *testing.T, c *testCluster, leader, follower *testNode) {
	create := &raftlbv1.CreateServiceRequest{Service: tcpService("198.51.100.40", 80)}

	t.Run("no client certificate", func(t *testing.T) {
		tc, err := pki.ClientTLS(filepath.Join(c.tlsDir, "ca.pem"), filepath.Join(c.tlsDir, "admin.pem"), filepath.Join(c.tlsDir, "admin-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = nil
		cc, err := grpc.NewClient(follower.cfg.APIAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		_, err = raftlbv1.NewLoadBalancerServiceClient(cc).ListServices(callCtx(t), &raftlbv1.ListServicesRequest{})
		if code := status.Code(err); code != codes.Unavailable && code != codes.Unauthenticated {
			t.Errorf("list without certificate: %v, want refused", err)
		}
	})

	for _, cert := range []string{"reader", "agent-rs1"} {
		t.Run(cert+" cannot create", func(t *testing.T) {
			lb := raftlbv1.NewLoadBalancerServiceClient(c.conn(follower, cert))
			_, err := lb.CreateService(callCtx(t), create)
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("create as %s: %v, want PermissionDenied", cert, err)
			}
		})
	}

	t.Run("reader can read", func(t *testing.T) {
		lb := raftlbv1.NewLoadBalancerServiceClient(c.conn(follower, "reader"))
		if _, err := lb.ListServices(callCtx(t), &raftlbv1.ListServicesRequest{Consistent: true}); err != nil {
			t.Errorf("list as reader: %v", err)
		}
	})

	agent := raftlbv1.NewAgentServiceClient(c.conn(follower, "agent-rs1"))
	t.Run("agent registers only its own addresses", func(t *testing.T) {
		_, err := agent.Register(callCtx(t), &raftlbv1.RegisterRequest{Id: "rs1", Interfaces: []*raftlbv1.Interface{
			{Name: "eth0", Mac: "02:00:00:00:00:11", Addresses: []string{"192.0.2.99/24"}},
		}})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("register foreign address: %v, want PermissionDenied", err)
		}
		_, err = agent.Register(callCtx(t), &raftlbv1.RegisterRequest{Id: "rs2"})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("register as rs2: %v, want PermissionDenied", err)
		}
		_, err = agent.Register(callCtx(t), &raftlbv1.RegisterRequest{Id: "rs1", Interfaces: []*raftlbv1.Interface{
			{Name: "eth0", Mac: "02:00:00:00:00:11", Addresses: []string{agentIP.String() + "/24"}},
		}})
		if err != nil {
			t.Fatalf("register own address: %v", err)
		}
	})

	t.Run("agent watches only its own config", func(t *testing.T) {
		ctx, cancel := context.WithCancel(callCtx(t))
		defer cancel()
		other, err := agent.WatchConfig(ctx, &raftlbv1.WatchConfigRequest{Id: "rs2"})
		if err == nil {
			_, err = other.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("watch rs2 as rs1: %v, want PermissionDenied", err)
		}
		own, err := agent.WatchConfig(ctx, &raftlbv1.WatchConfigRequest{Id: "rs1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := own.Recv(); err != nil {
			t.Errorf("watch own config: %v", err)
		}
	})

	t.Run("admin cannot call internal apply", func(t *testing.T) {
		in := raftlbv1.NewInternalServiceClient(c.conn(leader, "admin"))
		_, err := in.Apply(callCtx(t), &raftlbv1.ApplyRequest{Command: &raftlbv1.Command{
			Op: &raftlbv1.Command_CreateService{CreateService: create},
		}})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("internal apply as admin: %v, want PermissionDenied", err)
		}
	})

	t.Run("follower refuses forwarded apply", func(t *testing.T) {
		in := raftlbv1.NewInternalServiceClient(c.conn(follower, "director"))
		_, err := in.Apply(callCtx(t), &raftlbv1.ApplyRequest{Command: &raftlbv1.Command{
			Op: &raftlbv1.Command_CreateService{CreateService: create},
		}})
		if !isNotLeader(err) {
			t.Errorf("internal apply on follower: %v, want NOT_LEADER", err)
		}
	})
}

func testUnimplemented(t *testing.T, c *testCluster, n *testNode) {
	cc := c.conn(n, "admin")
	// Without a dataplane no director asks for leases, so none may take a VIP.
	_, err := raftlbv1.NewClusterServiceClient(cc).MoveVip(callCtx(t), &raftlbv1.MoveVipRequest{Vip: "198.51.100.20", To: "d1"})
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "no director may take") {
		t.Errorf("move vip: %v, want FailedPrecondition saying no director may take it", err)
	}
	_, err = raftlbv1.NewClusterServiceClient(cc).MoveVip(callCtx(t), &raftlbv1.MoveVipRequest{Vip: "not-an-ip", To: "d1"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("move vip with a bad address: %v, want InvalidArgument", err)
	}
	// These test directors run without a dataplane: no live table to list.
	_, err = raftlbv1.NewConnectionServiceClient(cc).ListConnections(callCtx(t), &raftlbv1.ListConnectionsRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("list connections: %v, want FailedPrecondition", err)
	}
}

func testMetrics(t *testing.T, n *testNode) {
	resp, err := http.Get("http://" + n.d.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatalf("get metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	var missing []string
	for _, name := range []string{
		"raftlb_raft_state", "raftlb_raft_term", "raftlb_raft_applied_index", "raftlb_raft_commit_index",
		"raftlb_raft_leader_changes_total", "raftlb_fsm_generation", `raftlb_api_requests_total{code="OK",method="/raftlb.v1.ClusterService/GetStatus"}`,
		"raftlb_ha_reassignments_total", "raftlb_ha_failover_seconds", "raftlb_ha_takeovers_total", "raftlb_ha_garps_sent_total",
		"raftlb_ha_connsync_lag_seconds",
	} {
		if !strings.Contains(string(b), name) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		t.Errorf("metrics lack %s", strings.Join(missing, ", "))
	}
}
