package server

import (
	"context"
	"fmt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/pki"
)

// testCluster is N in-process directors on 127.0.0.1 speaking real Raft over
// TCP+TLS, with certificates from pki.Init.
type testCluster struct {
	t      testing.TB
	tlsDir string
	key    string
	nodes  []*testNode
}

type testNode struct {
	id      string
	cfg     Config
	d       *Director
	cancel  context.CancelFunc
	done    chan error
	metrics bool
	running bool
	// lis are the sockets of the first start; restarts bind the same addresses.
	lis Listeners
	// opts are passed to New on every start (e.g. a dataplane).
	opts []Option
}

// agentIP is the address the test agent certificate may register.
var agentIP = net.IPv4(192, 0, 2, 11)

func testLogger() *slog.Logger {
	if os.Getenv("RAFTLB_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return l
}

// newTestCluster prepares n directors d1..dn; start them with startAll.
func newTestCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tlsDir: t.TempDir()}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("d%d", i+1)
	}
	err := pki.Init(c.tlsDir, pki.InitOptions{
		Directors: ids,
		Agents:    []pki.AgentCert{{ID: "rs1", IPs: []net.IP{agentIP}}},
	})
	if err != nil {
		t.Fatalf("pki init: %v", err)
	}
	c.key = filepath.Join(c.tlsDir, "gossip.key")
	if err := WriteGossipKey(c.key); err != nil {
		t.Fatalf("write gossip key: %v", err)
	}
	// Every peer's Raft address must be known before any starts, so the
	// sockets are opened here and handed over with WithListeners.
	peers := map[string]string{}
	lis := map[string]Listeners{}
	for _, id := range ids {
		l := Listeners{API: listenLoopback(t), Raft: listenLoopback(t)}
		lis[id] = l
		peers[id] = l.Raft.Addr().String()
	}
	for _, id := range ids {
		cfg := Config{
			ID:            id,
			DataDir:       filepath.Join(t.TempDir(), id),
			APIAddr:       lis[id].API.Addr().String(),
			RaftAddr:      peers[id],
			GossipAddr:    "127.0.0.1:0",
			Peers:         peers,
			TLSCA:         filepath.Join(c.tlsDir, "ca.pem"),
			TLSCert:       filepath.Join(c.tlsDir, "director-"+id+".pem"),
			TLSKey:        filepath.Join(c.tlsDir, "director-"+id+"-key.pem"),
			GossipKeyFile: c.key,
		}
		cfg.Defaults()
		c.nodes = append(c.nodes, &testNode{id: id, cfg: cfg, lis: lis[id]})
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *testCluster) startAll() {
	c.t.Helper()
	for _, n := range c.nodes {
		c.start(n)
	}
}

// start runs n's director; its data dir and addresses are kept across restarts.
func (c *testCluster) start(n *testNode) {
	c.t.Helper()
	cfg := n.cfg
	if n.metrics {
		cfg.MetricsAddr = "127.0.0.1:0"
	}
	opts := slices.Clone(n.opts)
	if n.lis.API != nil {
		opts = append(opts, WithListeners(n.lis))
		n.lis = Listeners{}
	}
	d, err := New(cfg, testLogger().With("node", n.id), opts...)
	if err != nil {
		c.t.Fatalf("new director %s: %v", n.id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.d, n.cancel, n.done, n.running = d, cancel, make(chan error, 1), true
	go func() { n.done <- d.Run(ctx) }()
}

// stop shuts n down gracefully and waits for Run to return.
func (c *testCluster) stop(n *testNode) {
	c.t.Helper()
	if !n.running {
		return
	}
	n.cancel()
	select {
	case err := <-n.done:
		if err != nil {
			c.t.Errorf("run %s: %v", n.id, err)
		}
	case <-time.After(20 * time.Second):
		var buf strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
		c.t.Errorf("director %s did not stop; goroutines:\n%s", n.id, buf.String())
	}
	n.running = false
}

func (c *testCluster) stopAll() {
	for _, n := range c.nodes {
		c.stop(n)
		if n.lis.API != nil {
			_ = n.lis.API.Close() // Never started.
			_ = n.lis.Raft.Close()
		}
	}
}

// conn dials node n's API with the named certificate from the test CA
// ("admin", "reader", "agent-rs1", "director-d1", ...).
func (c *testCluster) conn(n *testNode, cert string) *grpc.ClientConn {
	c.t.Helper()
	tc, err := pki.ClientTLS(filepath.Join(c.tlsDir, "ca.pem"),
		filepath.Join(c.tlsDir, cert+".pem"), filepath.Join(c.tlsDir, cert+"-key.pem"))
	if err != nil {
		c.t.Fatalf("client tls %s: %v", cert, err)
	}
	cc, err := grpc.NewClient(n.cfg.APIAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		c.t.Fatalf("dial %s: %v", n.id, err)
	}
	c.t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func (c *testCluster) admin(n *testNode) (raftlbv1.LoadBalancerServiceClient, raftlbv1.ClusterServiceClient) {
	cc := c.conn(n, "admin")
	return raftlbv1.NewLoadBalancerServiceClient(cc), raftlbv1.NewClusterServiceClient(cc)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func callCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitLeader waits until every running node reports the same leader, all
// running nodes are announced in the replicated state, and returns the
// leader node and its term.
func (c *testCluster) waitLeader(exclude ...*testNode) (*testNode, uint64) {
	c.t.Helper()
	var leader *testNode
	var term uint64
	waitFor(c.t, 15*time.Second, "a leader known to all", func() error {
		leader, term = nil, 0
		var leaderID string
		for _, n := range c.nodes {
			if !n.running {
				continue
			}
			_, cl := c.admin(n)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cl.GetStatus(ctx, &raftlbv1.GetStatusRequest{})
			cancel()
			if err != nil {
				return fmt.Errorf("status of %s: %w", n.id, err)
			}
			if st.GetLeaderId() == "" {
				return fmt.Errorf("%s knows no leader", n.id)
			}
			if leaderID != "" && st.GetLeaderId() != leaderID {
				return fmt.Errorf("%s says leader %s, others %s", n.id, st.GetLeaderId(), leaderID)
			}
			leaderID = st.GetLeaderId()
			if n.id == leaderID {
				if st.GetRaftState() != "Leader" {
					return fmt.Errorf("%s is %s", n.id, st.GetRaftState())
				}
				leader, term = n, st.GetTerm()
			}
			announced := 0
			for _, ds := range st.GetDirectors() {
				if ds.GetDirector().GetApiAddress() != "" {
					announced++
				}
			}
			if announced < c.running() {
				return fmt.Errorf("%s knows %d announced directors, want %d", n.id, announced, c.running())
			}
		}
		if leader == nil {
			return fmt.Errorf("leader %s is not running", leaderID)
		}
		return nil
	})
	return leader, term
}

func (c *testCluster) running() int {
	k := 0
	for _, n := range c.nodes {
		if n.running {
			k++
		}
	}
	return k
}

// follower returns a running node other than leader.
func (c *testCluster) follower(leader *testNode) *testNode {
	for _, n := range c.nodes {
		if n.running && n != leader {
			return n
		}
	}
	c.t.Fatalf("no running follower")
	return nil
}

func tcpService(vip string, port uint32) *raftlbv1.VirtualService {
	return &raftlbv1.VirtualService{
		Key: &raftlbv1.ServiceKey{Vip: vip, Port: port, Protocol: raftlbv1.Protocol_PROTOCOL_TCP},
	}
}

// createService creates svc the way a careful client does: a write whose
// outcome is unknown (leadership moved under load) is retried, and
// AlreadyExists after such a retry means the first attempt went through.
func createService(t testing.TB, lb raftlbv1.LoadBalancerServiceClient, svc *raftlbv1.VirtualService) *raftlbv1.VirtualService {
	t.Helper()
	retried := false
	for attempt := 0; ; attempt++ {
		resp, err := lb.CreateService(callCtx(t), &raftlbv1.CreateServiceRequest{Service: svc})
		switch code := status.Code(err); {
		case err == nil:
			return resp.GetService()
		case code == codes.AlreadyExists && retried:
			return svc
		case code == codes.Unavailable && attempt < 5:
			retried = true
			time.Sleep(100 * time.Millisecond)
		default:
			t.Fatalf("create service %v: %v", svc.GetKey(), err)
			return nil
		}
	}
}
