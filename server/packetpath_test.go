package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/health"
)

// fakeDataplane records what the packet path asks of it. It refuses, as the
// real one does with ErrInvalid, any state naming an address in refuse.
type fakeDataplane struct {
	mu      sync.Mutex
	refuse  map[netip.Addr]bool
	applied dataplane.State
	applies int
	conns   []dataplane.Conn
	deleted []dataplane.ConnKey
	flushed []string
}

func (f *fakeDataplane) Apply(st dataplane.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies++
	for _, s := range st.Services {
		if f.refuse[s.VIP] {
			return fmt.Errorf("validate service %s: %w", s.ServiceKey, dataplane.ErrInvalid)
		}
		for _, r := range s.Realservers {
			if f.refuse[r.Addr] {
				return fmt.Errorf("validate realserver %s: %w", r.Addr, dataplane.ErrInvalid)
			}
		}
	}
	f.applied = st
	return nil
}

func (f *fakeDataplane) SetLease(netip.Addr, time.Time) error { return nil }

func (f *fakeDataplane) Connections() ([]dataplane.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.conns), nil
}

func (f *fakeDataplane) DeleteConnections(keys []dataplane.ConnKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, keys...)
	return nil
}

func (f *fakeDataplane) Flush(vip *netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := "all"
	if vip != nil {
		s = vip.String()
	}
	f.flushed = append(f.flushed, s)
	return nil
}

func (f *fakeDataplane) Stats() (dataplane.Stats, error) { return dataplane.Stats{}, nil }

func (f *fakeDataplane) Run(ctx context.Context, _ func([]dataplane.Event)) error {
	<-ctx.Done()
	return nil
}

// testFSM is a state machine fed commands directly, as Raft would.
type testFSM struct {
	*fsm.FSM
	index uint64
}

func newTestFSM(opts ...fsm.Option) *testFSM { return &testFSM{FSM: fsm.New(nil, opts...)} }

func (f *testFSM) apply(t *testing.T, cmd *raftlbv1.Command) {
	t.Helper()
	if cmd.UnixNano == 0 {
		cmd.UnixNano = time.Now().UnixNano()
	}
	b, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	f.index++
	res, _ := f.Apply(&raft.Log{Index: f.index, Type: raft.LogCommand, Data: b}).(*raftlbv1.Result)
	if err := fsm.ResultError(res); err != nil {
		t.Fatalf("apply %v: %v", cmd.GetOp(), err)
	}
}

var (
	ppVIP   = "198.51.100.10"
	ppNAT   = "198.51.100.30"
	ppGW    = "203.0.113.254"
	ppFront = "192.0.2.1"
)

func tcpKey(vip string, port uint32) *raftlbv1.ServiceKey {
	return &raftlbv1.ServiceKey{Vip: vip, Port: port, Protocol: raftlbv1.Protocol_PROTOCOL_TCP}
}

// ppState builds: directors d1 (front 192.0.2.1) and d2; a DR service on
// ppVIP with three realservers (one drained), policy as given and an HTTP
// check; a NAT service on ppNAT; the NAT gateway.
func ppState(t *testing.T, policy raftlbv1.FailurePolicy, opts ...fsm.Option) *testFSM {
	f := newTestFSM(opts...)
	for _, d := range []*raftlbv1.Director{
		{Id: "d1", ApiAddress: "192.0.2.1:9443", RaftAddress: "203.0.113.1:9444", FrontAddress: ppFront},
		{Id: "d2", ApiAddress: "192.0.2.2:9443", RaftAddress: "203.0.113.2:9444", FrontAddress: "192.0.2.2"},
	} {
		f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_UpsertDirector{UpsertDirector: &raftlbv1.UpsertDirector{Director: d}}})
	}
	f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{
		Service: &raftlbv1.VirtualService{
			Key: tcpKey(ppVIP, 80), Scheduler: raftlbv1.Scheduler_SCHEDULER_RR, FailurePolicy: policy,
			Timeouts:    &raftlbv1.Timeouts{TcpEstablishedSeconds: 60},
			HealthCheck: &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP},
		},
	}}})
	for i, admin := range []raftlbv1.AdminState{raftlbv1.AdminState_ADMIN_STATE_ACTIVE, raftlbv1.AdminState_ADMIN_STATE_ACTIVE, raftlbv1.AdminState_ADMIN_STATE_DRAIN} {
		f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_AddRealserver{AddRealserver: &raftlbv1.AddRealserverRequest{
			Service: tcpKey(ppVIP, 80),
			Realserver: &raftlbv1.Realserver{Address: fmt.Sprintf("192.0.2.1%d", i+1), Weight: 100,
				Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR, AdminState: admin},
		}}})
	}
	f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: &raftlbv1.SetAddressRequest{
		Address: &raftlbv1.Address{Address: ppGW, Kind: raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY},
	}}})
	f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{
		Service: &raftlbv1.VirtualService{Key: tcpKey(ppNAT, 80)},
	}}})
	f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_AddRealserver{AddRealserver: &raftlbv1.AddRealserverRequest{
		Service:    tcpKey(ppNAT, 80),
		Realserver: &raftlbv1.Realserver{Address: "203.0.113.11", Port: 8080, Weight: 1, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT},
	}}})
	return f
}

func verdict(vip, addr string, s raftlbv1.HealthState) *raftlbv1.Command {
	return verdictPort(vip, addr, 80, s)
}

func verdictPort(vip, addr string, port uint32, s raftlbv1.HealthState) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_HealthVerdicts{HealthVerdicts: &raftlbv1.HealthVerdicts{
		Verdicts: []*raftlbv1.HealthVerdict{{Service: tcpKey(vip, 80), Address: addr, Port: port, State: s}},
	}}}
}

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestPacketPathReconcile(t *testing.T) {
	f := ppState(t, raftlbv1.FailurePolicy_FAILURE_POLICY_KEEP)
	f.apply(t, verdict(ppVIP, "192.0.2.11", raftlbv1.HealthState_HEALTH_STATE_DOWN))
	f.apply(t, verdict(ppVIP, "192.0.2.12", raftlbv1.HealthState_HEALTH_STATE_UP))
	dp := &fakeDataplane{}
	pp := NewPacketPath(dp, nil)
	pp.id = "d1"
	if err := pp.Reconcile(context.Background(), f.FSM); err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	timeouts := dataplane.DefaultTimeouts
	timeouts.TCPEstablished = time.Minute
	want := dataplane.State{
		Services: []dataplane.Service{
			{
				ServiceKey: dataplane.ServiceKey{VIP: a(ppVIP), Port: 80, Proto: dataplane.TCP},
				Scheduler:  dataplane.RR,
				Timeouts:   timeouts,
				Realservers: []dataplane.Realserver{
					{Addr: a("192.0.2.11"), Port: 80, Weight: 100, Method: dataplane.DR, Unhealthy: true},
					{Addr: a("192.0.2.12"), Port: 80, Weight: 100, Method: dataplane.DR},
					{Addr: a("192.0.2.13"), Port: 80, Weight: 100, Method: dataplane.DR, Drain: true},
				},
			},
			{
				ServiceKey:  dataplane.ServiceKey{VIP: a(ppNAT), Port: 80, Proto: dataplane.TCP},
				Scheduler:   dataplane.MH,
				Timeouts:    dataplane.DefaultTimeouts,
				Realservers: []dataplane.Realserver{{Addr: a("203.0.113.11"), Port: 8080, Weight: 1, Method: dataplane.NAT}},
			},
		},
		VIPs:      []netip.Addr{a(ppVIP), a(ppNAT)},
		Gateways:  []netip.Addr{a(ppGW)},
		FrontAddr: a(ppFront),
	}
	if diff := cmp.Diff(want, dp.applied, addrCmp); diff != "" {
		t.Errorf("applied state (-want +got):\n%s", diff)
	}

	// A refused realserver is left out; everything else still goes in.
	dp.refuse = map[netip.Addr]bool{a("192.0.2.12"): true, a(ppNAT): true}
	if err := pp.Reconcile(context.Background(), f.FSM); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range dp.applied.Services {
		for _, r := range s.Realservers {
			got = append(got, s.VIP.String()+" "+r.Addr.String())
		}
	}
	if diff := cmp.Diff([]string{ppVIP + " 192.0.2.11", ppVIP + " 192.0.2.13"}, got); diff != "" {
		t.Errorf("applied realservers with refusals (-want +got):\n%s", diff)
	}
	if n := pp.skipped.Load(); n != 2 {
		t.Errorf("skipped = %d, want 2 (one realserver, one service)", n)
	}
	if len(dp.applied.Gateways) != 1 || dp.applied.FrontAddr != a(ppFront) {
		t.Errorf("addresses left out with a refused service: %+v", dp.applied)
	}
}

func TestPacketPathFailurePolicy(t *testing.T) {
	a := netip.MustParseAddr
	conn := func(port uint16, real string) dataplane.Conn {
		return dataplane.Conn{
			Key:  dataplane.ConnKey{Proto: dataplane.TCP, Client: netip.AddrPortFrom(a("192.0.2.100"), port), VIP: netip.AddrPortFrom(a(ppVIP), 80)},
			Real: netip.AddrPortFrom(a(real), 80), State: dataplane.StateEstablished, LastSeen: time.Now(),
		}
	}
	for _, tc := range []struct {
		policy raftlbv1.FailurePolicy
		want   []uint16 // client ports of the dropped connections
	}{
		{raftlbv1.FailurePolicy_FAILURE_POLICY_KEEP, nil},
		{raftlbv1.FailurePolicy_FAILURE_POLICY_UNSPECIFIED, nil},
		{raftlbv1.FailurePolicy_FAILURE_POLICY_RESCHEDULE, []uint16{1, 3}},
		{raftlbv1.FailurePolicy_FAILURE_POLICY_DROP, []uint16{1, 3}},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			f := ppState(t, tc.policy)
			dp := &fakeDataplane{conns: []dataplane.Conn{conn(1, "192.0.2.11"), conn(2, "192.0.2.12"), conn(3, "192.0.2.11")}}
			pp := NewPacketPath(dp, nil)
			if err := pp.Reconcile(context.Background(), f.FSM); err != nil {
				t.Fatal(err)
			}
			f.apply(t, verdict(ppVIP, "192.0.2.11", raftlbv1.HealthState_HEALTH_STATE_DOWN))
			if err := pp.Reconcile(context.Background(), f.FSM); err != nil {
				t.Fatal(err)
			}
			// Again: a realserver that stays down drops nothing more.
			if err := pp.Reconcile(context.Background(), f.FSM); err != nil {
				t.Fatal(err)
			}
			var got []uint16
			for _, k := range dp.deleted {
				got = append(got, k.Client.Port())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("dropped connections (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPacketPathFlushAndList(t *testing.T) {
	dp := &fakeDataplane{}
	pp := NewPacketPath(dp, nil)
	f := ppState(t, raftlbv1.FailurePolicy_FAILURE_POLICY_KEEP, fsm.WithConnectionHook(pp.onConnChange))
	f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_FlushConnections{FlushConnections: &raftlbv1.FlushConnectionsRequest{Vip: ppVIP}}})
	f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_FlushConnections{FlushConnections: &raftlbv1.FlushConnectionsRequest{}}})
	if diff := cmp.Diff([]string{ppVIP, "all"}, dp.flushed); diff != "" {
		t.Errorf("flushes (-want +got):\n%s", diff)
	}

	if err := pp.Reconcile(context.Background(), f.FSM); err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	now := time.Now()
	conn := func(vip string, port uint16, st dataplane.ConnState) dataplane.Conn {
		return dataplane.Conn{
			Key:  dataplane.ConnKey{Proto: dataplane.TCP, Client: netip.AddrPortFrom(a("192.0.2.100"), port), VIP: netip.AddrPortFrom(a(vip), 80)},
			Real: netip.AddrPortFrom(a("192.0.2.11"), 80), State: st, LastSeen: now.Add(-10 * time.Second),
		}
	}
	dp.conns = []dataplane.Conn{
		conn(ppNAT, 5, dataplane.StateEstablished),
		conn(ppVIP, 9, dataplane.StateFinWait),
		conn(ppVIP, 7, dataplane.StateEstablished),
		conn(ppVIP, 8, dataplane.StateEstablished),
	}
	got, truncated, err := pp.connections(a(ppVIP), 2, now)
	if err != nil {
		t.Fatal(err)
	}
	est := raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED
	want := []*raftlbv1.Connection{
		// The service's established timeout is 60 s.
		{Protocol: raftlbv1.Protocol_PROTOCOL_TCP, ClientAddress: "192.0.2.100", ClientPort: 7, Vip: ppVIP, Vport: 80,
			RealserverAddress: "192.0.2.11", RealserverPort: 80, State: est, ExpiresInMs: 50000},
		{Protocol: raftlbv1.Protocol_PROTOCOL_TCP, ClientAddress: "192.0.2.100", ClientPort: 8, Vip: ppVIP, Vport: 80,
			RealserverAddress: "192.0.2.11", RealserverPort: 80, State: est, ExpiresInMs: 50000},
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" || !truncated {
		t.Errorf("connections (-want +got), truncated %v:\n%s", truncated, diff)
	}
	all, truncated, err := pp.connections(netip.Addr{}, 10, now)
	if err != nil || truncated || len(all) != 4 {
		t.Errorf("all connections: %d, truncated %v, err %v; want 4", len(all), truncated, err)
	}
}

func TestHealthVerdicts(t *testing.T) {
	f := ppState(t, raftlbv1.FailurePolicy_FAILURE_POLICY_KEEP)
	now := time.Now()
	// rs1's agent reported long ago; rs2's just now; rs3 has none.
	for _, ag := range []struct {
		id, addr string
		seen     time.Time
	}{{"rs1", "192.0.2.11/24", now.Add(-time.Minute)}, {"rs2", "192.0.2.12/24", now}} {
		f.apply(t, &raftlbv1.Command{UnixNano: ag.seen.UnixNano(), Op: &raftlbv1.Command_RegisterAgent{RegisterAgent: &raftlbv1.RegisterRequest{
			Id: ag.id, Interfaces: []*raftlbv1.Interface{{Name: "eth0", Mac: "02:00:00:00:00:01", Addresses: []string{ag.addr}}},
		}}})
	}
	f.apply(t, verdictPort(ppNAT, "203.0.113.11", 8080, raftlbv1.HealthState_HEALTH_STATE_DOWN))
	svcs := f.Services()
	target := func(addr string) health.Target {
		for _, vs := range svcs {
			for _, rs := range vs.GetRealservers() {
				if rs.GetAddress() == addr {
					tg, err := health.TargetFromProto(vs.GetKey(), rs)
					if err != nil {
						t.Fatal(err)
					}
					return tg
				}
			}
		}
		t.Fatalf("no realserver %s", addr)
		return health.Target{}
	}
	states := map[health.Target]health.State{
		target("192.0.2.11"): health.StateUp, // but its agent is silent
		target("192.0.2.12"): health.StateDown,
		target("192.0.2.13"): health.StateUnknown, // no opinion yet
	}
	got := func(id string) []string {
		h := &healthLoop{id: id, src: f.FSM, timeout: 30 * time.Second}
		var out []string
		for _, v := range h.verdicts(svcs, states, now) {
			out = append(out, v.GetAddress()+" "+v.GetState().String())
		}
		return out
	}
	// d1 owns both VIPs: the NAT service has no check, so its DOWN (from an
	// agent that has since recovered) goes back to UNKNOWN.
	want := []string{"192.0.2.11 HEALTH_STATE_DOWN", "192.0.2.12 HEALTH_STATE_DOWN", "203.0.113.11 HEALTH_STATE_UNKNOWN"}
	if diff := cmp.Diff(want, got("d1")); diff != "" {
		t.Errorf("d1's verdicts (-want +got):\n%s", diff)
	}
	if v := got("d2"); len(v) != 0 {
		t.Errorf("d2, which owns nothing, proposes %v", v)
	}
}

func TestServiceToDataplaneErrors(t *testing.T) {
	_, err := serviceToDataplane(&raftlbv1.VirtualService{Key: &raftlbv1.ServiceKey{Vip: ppVIP, Port: 80}})
	if !errors.Is(err, dataplane.ErrInvalid) {
		t.Errorf("service without protocol: %v, want ErrInvalid", err)
	}
	_, err = realserverToDataplane(&raftlbv1.Realserver{Address: "192.0.2.11", Port: 80})
	if !errors.Is(err, dataplane.ErrInvalid) {
		t.Errorf("realserver without method: %v, want ErrInvalid", err)
	}
}
