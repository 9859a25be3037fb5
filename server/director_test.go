package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// TestReplicationFailoverRestart walks a 3-voter cluster through what an
// operator sees: a write through a follower, reads everywhere, the leader's
// loss, writes continuing, a follower catching up and a full restart.
func TestReplicationFailoverRestart(t *testing.T) {
	c := newTestCluster(t, 3)
	c.startAll()
	leader, term := c.waitLeader()
	follower := c.follower(leader)

	lb, _ := c.admin(follower)
	svc := tcpService("198.51.100.10", 80)
	created := createService(t, lb, svc)
	if diff := cmp.Diff(svc.GetKey(), created.GetKey(), protocmp.Transform()); diff != "" {
		t.Errorf("created key (-want +got):\n%s", diff)
	}
	rs := &raftlbv1.Realserver{Address: "192.0.2.11", Weight: 1, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR}
	if _, err := lb.AddRealserver(callCtx(t), &raftlbv1.AddRealserverRequest{Service: svc.GetKey(), Realserver: rs}); err != nil {
		t.Fatalf("add realserver: %v", err)
	}

	// A consistent read sees the write at once on every director.
	for _, n := range c.nodes {
		lb, _ := c.admin(n)
		got, err := lb.GetService(callCtx(t), &raftlbv1.GetServiceRequest{Key: svc.GetKey(), Consistent: true})
		if err != nil {
			t.Fatalf("consistent get on %s: %v", n.id, err)
		}
		if len(got.GetService().GetRealservers()) != 1 {
			t.Errorf("consistent get on %s: %d realservers, want 1", n.id, len(got.GetService().GetRealservers()))
		}
	}
	// Local reads converge.
	waitServices(t, c, c.nodes, 1)

	// A watcher on a follower sees the list now and keeps its stream
	// through the failover.
	wctx, wcancel := context.WithCancel(callCtx(t))
	defer wcancel()
	watch, err := lb.WatchServices(wctx, &raftlbv1.WatchServicesRequest{})
	if err != nil {
		t.Fatalf("watch services: %v", err)
	}
	first, err := watch.Recv()
	if err != nil || len(first.GetServices()) != 1 {
		t.Fatalf("first watch message: %v, %v; want one service", first, err)
	}

	// The leader goes away: a new one with a higher term, state intact, writes go on.
	c.stop(leader)
	newLeader, newTerm := c.waitLeader()
	if newTerm <= term {
		t.Errorf("term after failover = %d, want > %d", newTerm, term)
	}
	if newLeader == leader {
		t.Fatalf("stopped node %s still leader", leader.id)
	}
	survivor := c.follower(newLeader)
	lb, _ = c.admin(survivor)
	createService(t, lb, tcpService("198.51.100.11", 443))
	for {
		msg, err := watch.Recv()
		if err != nil {
			t.Fatalf("watch across failover: %v", err)
		}
		if msg.GetGeneration() <= first.GetGeneration() {
			t.Fatalf("watch generation went from %d to %d", first.GetGeneration(), msg.GetGeneration())
		}
		if len(msg.GetServices()) == 2 {
			break
		}
	}
	wcancel()
	got, err := lb.ListServices(callCtx(t), &raftlbv1.ListServicesRequest{Consistent: true})
	if err != nil {
		t.Fatalf("list after failover: %v", err)
	}
	if len(got.GetServices()) != 2 {
		t.Errorf("services after failover = %d, want 2", len(got.GetServices()))
	}

	// The old leader comes back as a follower and catches up.
	c.start(leader)
	waitServices(t, c, []*testNode{leader}, 2)

	// Everyone restarts from their data dirs; nothing is lost.
	c.stopAll()
	c.startAll()
	c.waitLeader()
	waitServices(t, c, c.nodes, 2)
	for _, n := range c.nodes {
		lb, _ := c.admin(n)
		got, err := lb.GetService(callCtx(t), &raftlbv1.GetServiceRequest{Key: svc.GetKey(), Consistent: true})
		if err != nil {
			t.Fatalf("get after restart on %s: %v", n.id, err)
		}
		if diff := cmp.Diff([]*raftlbv1.Realserver{rs}, got.GetService().GetRealservers(), protocmp.Transform(),
			protocmp.IgnoreFields(&raftlbv1.Realserver{}, "port", "health", "admin_state", "stats")); diff != "" {
			t.Errorf("realservers on %s after restart (-want +got):\n%s", n.id, diff)
		}
	}
}

// waitServices waits until every given node's local read lists want services.
func waitServices(t *testing.T, c *testCluster, nodes []*testNode, want int) {
	t.Helper()
	for _, n := range nodes {
		lb, _ := c.admin(n)
		waitFor(t, 10*time.Second, fmt.Sprintf("%d services on %s", want, n.id), func() error {
			got, err := lb.ListServices(callCtx(t), &raftlbv1.ListServicesRequest{})
			if err != nil {
				return err
			}
			if len(got.GetServices()) != want {
				return fmt.Errorf("%d services", len(got.GetServices()))
			}
			return nil
		})
	}
}
