package server

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// TestInsecureSingleNode: a one-voter cluster in plaintext takes writes and
// answers consistent reads; every caller has all rights.
func TestInsecureSingleNode(t *testing.T) {
	l := Listeners{API: listenLoopback(t), Raft: listenLoopback(t)}
	cfg := Config{
		ID:         "solo",
		DataDir:    filepath.Join(t.TempDir(), "solo"),
		APIAddr:    l.API.Addr().String(),
		RaftAddr:   l.Raft.Addr().String(),
		GossipAddr: "127.0.0.1:0",
		Peers:      map[string]string{"solo": l.Raft.Addr().String()},
		Insecure:   true,
	}
	cfg.Defaults()
	d, err := New(cfg, testLogger(), WithListeners(l))
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})

	cc, err := grpc.NewClient(d.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	lb := raftlbv1.NewLoadBalancerServiceClient(cc)
	cl := raftlbv1.NewClusterServiceClient(cc)
	waitFor(t, 10*time.Second, "leadership", func() error {
		st, err := cl.GetStatus(callCtx(t), &raftlbv1.GetStatusRequest{})
		if err == nil && st.GetLeaderId() != "solo" {
			return fmt.Errorf("leader %q", st.GetLeaderId())
		}
		return err
	})
	if _, err := lb.CreateService(callCtx(t), &raftlbv1.CreateServiceRequest{Service: tcpService("198.51.100.50", 53)}); err != nil {
		t.Fatalf("create: %v", err)
	}
	got, err := lb.ListServices(callCtx(t), &raftlbv1.ListServicesRequest{Consistent: true})
	if err != nil || len(got.GetServices()) != 1 {
		t.Fatalf("list = %v, %v; want one service", got, err)
	}
}
