package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"
)

// fakeDirector is an in-process AgentService: tests push configs into it and
// read what the agent registered and reported.
type fakeDirector struct {
	raftlbv1.UnimplementedAgentServiceServer
	addr       string
	srv        *grpc.Server
	configs    chan *raftlbv1.WatchConfigResponse
	registered chan *raftlbv1.RegisterRequest
	watches    chan *raftlbv1.WatchConfigRequest
	reports    chan *raftlbv1.ReportStatusRequest
}

func startFakeDirector(t *testing.T) *fakeDirector {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	d := &fakeDirector{
		addr:       lis.Addr().String(),
		srv:        grpc.NewServer(),
		configs:    make(chan *raftlbv1.WatchConfigResponse, 16),
		registered: make(chan *raftlbv1.RegisterRequest, 16),
		watches:    make(chan *raftlbv1.WatchConfigRequest, 16),
		reports:    make(chan *raftlbv1.ReportStatusRequest, 64),
	}
	raftlbv1.RegisterAgentServiceServer(d.srv, d)
	go d.srv.Serve(lis)
	t.Cleanup(d.srv.Stop)
	return d
}

func (d *fakeDirector) Register(_ context.Context, req *raftlbv1.RegisterRequest) (*raftlbv1.RegisterResponse, error) {
	d.registered <- req
	return &raftlbv1.RegisterResponse{}, nil
}

func (d *fakeDirector) WatchConfig(req *raftlbv1.WatchConfigRequest, stream grpc.ServerStreamingServer[raftlbv1.WatchConfigResponse]) error {
	d.watches <- req
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case c := <-d.configs:
			if err := stream.Send(c); err != nil {
				return err
			}
		}
	}
}

func (d *fakeDirector) ReportStatus(_ context.Context, req *raftlbv1.ReportStatusRequest) (*raftlbv1.ReportStatusResponse, error) {
	d.reports <- req
	return &raftlbv1.ReportStatusResponse{}, nil
}

// recv waits for a value or fails the test at the deadline.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waitReport returns the first report of generation gen, checking that the
// generations reported before it never go backwards.
func waitReport(t *testing.T, d *fakeDirector, gen uint64) *raftlbv1.ReportStatusRequest {
	t.Helper()
	var last uint64
	for {
		r := recv(t, d.reports, "status report")
		if r.GetAppliedGeneration() < last {
			t.Errorf("reported generation %d after %d", r.GetAppliedGeneration(), last)
		}
		last = r.GetAppliedGeneration()
		if last == gen {
			return r
		}
	}
}

type runningAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// stop cancels the agent and returns Run's result; it may be called twice.
func (a *runningAgent) stop(t *testing.T) error {
	t.Helper()
	a.cancel()
	select {
	case <-a.done:
		return a.err
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop")
		return nil
	}
}

func startAgent(t *testing.T, cfg Config) *runningAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &runningAgent{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.err = Run(ctx, cfg)
	}()
	t.Cleanup(func() { a.stop(t) })
	return a
}

func testAgentConfig(t *testing.T, k Kernel, directors ...string) Config {
	return Config{
		ID:             "rs1",
		Directors:      directors,
		Insecure:       true,
		FacingIfaces:   []string{"eth0"},
		StateDir:       t.TempDir(),
		Logger:         testLogger(t),
		Decapper:       newFakeDecapper(),
		ResyncInterval: 100 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
		kernel:         k,
	}
}

func dr(vip string) *raftlbv1.AgentVip {
	return &raftlbv1.AgentVip{Vip: vip, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR}
}

func tun(vip string) *raftlbv1.AgentVip {
	return &raftlbv1.AgentVip{Vip: vip, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN}
}

func loHas(k *fakeKernel, vips ...netip.Addr) bool {
	lo := k.snapshot().Links["lo"]
	for _, v := range vips {
		if !slices.Contains(lo.Addrs, vipPrefix(v)) {
			return false
		}
	}
	return true
}

func TestRunAppliesGenerationsAndReports(t *testing.T) {
	d := startFakeDirector(t)
	k := newFakeKernel()
	startAgent(t, testAgentConfig(t, k, d.addr))

	reg := recv(t, d.registered, "register")
	want := &raftlbv1.RegisterRequest{Id: "rs1", Interfaces: []*raftlbv1.Interface{
		{Name: "eth0", Mac: "02:00:00:00:00:02", Addresses: []string{"192.0.2.11"}},
		{Name: "eth1", Mac: "02:00:00:00:00:03", Addresses: []string{"203.0.113.11"}},
	}}
	if diff := cmp.Diff(want, reg, protocmp.Transform()); diff != "" {
		t.Errorf("register (-want +got):\n%s", diff)
	}
	recv(t, d.watches, "watch")

	// An agent told which interfaces to register sends only those.
	e := startFakeDirector(t)
	cfg := testAgentConfig(t, newFakeKernel(), e.addr)
	cfg.RegisterIfaces = []string{"eth0"}
	startAgent(t, cfg)
	want.Interfaces = want.Interfaces[:1]
	if diff := cmp.Diff(want, recv(t, e.registered, "register"), protocmp.Transform()); diff != "" {
		t.Errorf("register with RegisterIfaces (-want +got):\n%s", diff)
	}

	d.configs <- &raftlbv1.WatchConfigResponse{Generation: 1, Vips: []*raftlbv1.AgentVip{dr("198.51.100.10")}}
	d.configs <- &raftlbv1.WatchConfigResponse{Generation: 2, Vips: []*raftlbv1.AgentVip{dr("198.51.100.10"), tun("198.51.100.20")}, TunnelSources: []string{"192.0.2.1"}}
	got := waitReport(t, d, 2)
	wantReport := &raftlbv1.ReportStatusRequest{
		Id: "rs1", AppliedGeneration: 2, DecapMode: DecapModeBPF,
		Vips: []*raftlbv1.VipResult{{Vip: "198.51.100.10", Applied: true}, {Vip: "198.51.100.20", Applied: true}},
	}
	if diff := cmp.Diff(wantReport, got, protocmp.Transform()); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if !loHas(k, vipDR, vipTUN) {
		t.Errorf("lo = %v, want both VIPs", k.snapshot().Links["lo"].Addrs)
	}

	// An invalid generation is reported and not applied.
	d.configs <- &raftlbv1.WatchConfigResponse{Generation: 3, Vips: []*raftlbv1.AgentVip{dr("not-an-ip")}}
	for {
		r := recv(t, d.reports, "report of the rejected config")
		if r.GetError() != "" {
			if !strings.Contains(r.GetError(), "vips[0].vip") || r.GetAppliedGeneration() != 2 {
				t.Errorf("report = %v, want generation 2 and an error naming vips[0].vip", r)
			}
			break
		}
	}
	if !loHas(k, vipDR, vipTUN) {
		t.Errorf("lo = %v after a rejected config, want both VIPs", k.snapshot().Links["lo"].Addrs)
	}
}

func TestRunFailsOver(t *testing.T) {
	a, b := startFakeDirector(t), startFakeDirector(t)
	k := newFakeKernel()
	startAgent(t, testAgentConfig(t, k, a.addr, b.addr))

	recv(t, a.watches, "watch on the first director")
	a.configs <- &raftlbv1.WatchConfigResponse{Generation: 5, Vips: []*raftlbv1.AgentVip{dr("198.51.100.10")}}
	waitReport(t, a, 5)

	a.srv.Stop()
	w := recv(t, b.watches, "watch on the second director")
	if w.GetAfterGeneration() != 5 {
		t.Errorf("watch after_generation = %d, want 5", w.GetAfterGeneration())
	}
	// The new director learns the applied state at once.
	waitReport(t, b, 5)
	b.configs <- &raftlbv1.WatchConfigResponse{Generation: 6, Vips: []*raftlbv1.AgentVip{dr("198.51.100.10"), dr("198.51.100.20")}}
	waitReport(t, b, 6)
	if !loHas(k, vipDR, vipTUN) {
		t.Errorf("lo = %v, want both VIPs", k.snapshot().Links["lo"].Addrs)
	}
}

func TestRunStopsWithoutTearingDown(t *testing.T) {
	d := startFakeDirector(t)
	k := newFakeKernel()
	cfg := testAgentConfig(t, k, d.addr)
	ag := startAgent(t, cfg)
	recv(t, d.watches, "watch")
	d.configs <- &raftlbv1.WatchConfigResponse{Generation: 1, Vips: []*raftlbv1.AgentVip{dr("198.51.100.10")}}
	waitReport(t, d, 1)
	applied := k.snapshot()

	if err := ag.stop(t); err != nil {
		t.Errorf("Run: %v, want nil after cancel", err)
	}
	if diff := cmp.Diff(applied, k.snapshot(), viewOpts); diff != "" {
		t.Errorf("kernel changed on stop (-want +got):\n%s", diff)
	}

	// Restarted with no director reachable, the agent applies the kept config
	// (here to a kernel that lost it) and keeps it.
	k2 := newFakeKernel()
	cfg2 := cfg
	cfg2.kernel = k2
	cfg2.Directors = []string{closedAddr(t)}
	startAgent(t, cfg2)
	deadline := time.Now().Add(10 * time.Second)
	for !loHas(k2, vipDR) {
		if time.Now().After(deadline) {
			t.Fatal("kept config not applied after restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		c := Config{ID: "rs1", Directors: []string{"192.0.2.1:9443"}, Insecure: true, FacingIfaces: []string{"eth0"}}
		c.Defaults()
		return c
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"no id", func(c *Config) { c.ID = "" }, "id: required"},
		{"no directors", func(c *Config) { c.Directors = nil }, "directors: at least one"},
		{"bad director", func(c *Config) { c.Directors = []string{"192.0.2.1"} }, "directors[0]"},
		{"no tls", func(c *Config) { c.Insecure = false }, "tls: required"},
		{"no facing", func(c *Config) { c.FacingIfaces = nil }, "facing-ifaces: at least one"},
		{"facing all", func(c *Config) { c.FacingIfaces = []string{"all"} }, "facing-ifaces[0]"},
		{"facing twice", func(c *Config) { c.FacingIfaces = []string{"eth0", "eth0"} }, "facing-ifaces[1]"},
		{"main table", func(c *Config) { c.NATTable = 254 }, "nat-table: 254"},
		{"same tables", func(c *Config) { c.MSSTable = c.NATTable }, "mss-table: must differ"},
		{"priority after main", func(c *Config) { c.RulePriority = 32766 }, "rule-priority"},
		{"tiny mss", func(c *Config) { c.TunnelMSS = 100 }, "tunnel-mss"},
		{"bad tunnel name", func(c *Config) { c.TunnelName = "a/b" }, "tunnel-name"},
		{"bad register iface", func(c *Config) { c.RegisterIfaces = []string{""} }, "register-ifaces[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestDesiredFromProto(t *testing.T) {
	tests := []struct {
		name    string
		in      *raftlbv1.WatchConfigResponse
		want    Desired
		wantErr string
	}{
		{
			name: "all fields",
			in: &raftlbv1.WatchConfigResponse{
				Generation: 4,
				Vips: []*raftlbv1.AgentVip{dr("198.51.100.10"), tun("198.51.100.20"),
					{Vip: "198.51.100.30", Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT}},
				NatSources: []string{"203.0.113.11"},
				NatServices: []*raftlbv1.NatService{
					{Source: "203.0.113.11", Protocol: raftlbv1.Protocol_PROTOCOL_TCP, Port: 80},
					{Source: "203.0.113.11", Protocol: raftlbv1.Protocol_PROTOCOL_UDP, Port: 53},
					{Source: "203.0.113.11", Protocol: raftlbv1.Protocol_PROTOCOL_TCP, Port: 80},
				},
				NatGateway:    "203.0.113.254",
				TunnelSources: []string{"192.0.2.1", "192.0.2.1"},
			},
			want: Desired{Generation: 4, VIPs: []VIP{{vipDR, MethodDR}, {vipTUN, MethodTUN}, {vipNAT, MethodNAT}},
				NATSources: []netip.Addr{natSrc}, NATServices: []NATService{{natSrc, ProtoTCP, 80}, {natSrc, ProtoUDP, 53}},
				NATGateway: natGw, TunnelSources: []netip.Addr{dir1}},
		},
		{
			name: "a vip listed twice gets the union",
			in:   &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{dr("198.51.100.10"), tun("198.51.100.10")}},
			want: Desired{VIPs: []VIP{{vipDR, MethodTUN}}},
		},
		{
			name:    "bad vip",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{dr("198.51.100")}},
			wantErr: "vips[0].vip",
		},
		{
			name:    "ipv6 vip",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{dr("2001:db8::1")}},
			wantErr: "vips[0].vip",
		},
		{
			name:    "loopback vip",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{dr("127.0.0.2")}},
			wantErr: "vips[0].vip: 127.0.0.2 is a loopback address",
		},
		{
			name:    "multicast vip",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{dr("224.0.0.1")}},
			wantErr: "vips[0].vip: 224.0.0.1 is a multicast address",
		},
		{
			name:    "broadcast vip",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{dr("255.255.255.255")}},
			wantErr: "vips[0].vip: 255.255.255.255 is the broadcast address",
		},
		{
			name:    "link-local vip",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{tun("169.254.0.1")}},
			wantErr: "vips[0].vip: 169.254.0.1 is a link-local address",
		},
		{
			name:    "unspecified vip",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{dr("0.0.0.0")}},
			wantErr: "vips[0].vip: 0.0.0.0 is the unspecified address",
		},
		{
			name: "nat service of another source",
			in: &raftlbv1.WatchConfigResponse{NatSources: []string{"203.0.113.11"}, NatGateway: "203.0.113.254",
				NatServices: []*raftlbv1.NatService{{Source: "203.0.113.12", Protocol: raftlbv1.Protocol_PROTOCOL_TCP, Port: 80}}},
			wantErr: "nat_services[0].source: 203.0.113.12 is not in nat_sources",
		},
		{
			name: "nat service without port",
			in: &raftlbv1.WatchConfigResponse{NatSources: []string{"203.0.113.11"}, NatGateway: "203.0.113.254",
				NatServices: []*raftlbv1.NatService{{Source: "203.0.113.11", Protocol: raftlbv1.Protocol_PROTOCOL_TCP}}},
			wantErr: "nat_services[0].port: 0 is out of range",
		},
		{
			name: "nat service without protocol",
			in: &raftlbv1.WatchConfigResponse{NatSources: []string{"203.0.113.11"}, NatGateway: "203.0.113.254",
				NatServices: []*raftlbv1.NatService{{Source: "203.0.113.11", Port: 80}}},
			wantErr: "nat_services[0].protocol",
		},
		{
			name:    "no method",
			in:      &raftlbv1.WatchConfigResponse{Vips: []*raftlbv1.AgentVip{{Vip: "198.51.100.10"}}},
			wantErr: "vips[0].method",
		},
		{
			name:    "nat source without gateway",
			in:      &raftlbv1.WatchConfigResponse{NatSources: []string{"203.0.113.11"}},
			wantErr: "nat_gateway: required",
		},
		{
			name:    "bad tunnel source",
			in:      &raftlbv1.WatchConfigResponse{TunnelSources: []string{"0.0.0.0"}},
			wantErr: "tunnel_sources[0]",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DesiredFromProto(tc.in)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error = %v, want ErrInvalidConfig naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DesiredFromProto: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, viewOpts); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunRejectsInvalidConfig(t *testing.T) {
	err := Run(context.Background(), Config{StateDir: filepath.Join(t.TempDir(), "x")})
	if err == nil || !strings.Contains(err.Error(), "id: required") {
		t.Errorf("Run: %v, want a validation error naming id", err)
	}
}

// TestRunRefusesSecondAgentOnStateDir: a second agent on the same state dir
// fails at once with ErrAlreadyRunning, and so does Cleanup, while the first
// keeps running; once it stops, the directory is free again.
func TestRunRefusesSecondAgentOnStateDir(t *testing.T) {
	d := startFakeDirector(t)
	cfg := testAgentConfig(t, newFakeKernel(), d.addr)
	first := startAgent(t, cfg)
	recv(t, d.watches, "watch")

	second := cfg
	second.kernel = newFakeKernel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Run(ctx, second)
	if !errors.Is(err, ErrAlreadyRunning) || !strings.Contains(err.Error(), cfg.StateDir) ||
		!strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("second Run: %v, want ErrAlreadyRunning naming the dir and the holder's pid", err)
	}
	if err := cleanup(newFakeKernel(), cfg.StateDir, newFakeDecapper(), testLogger(t)); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("Cleanup while running: %v, want ErrAlreadyRunning", err)
	}
	if err := first.stop(t); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if err := cleanup(newFakeKernel(), cfg.StateDir, newFakeDecapper(), testLogger(t)); err != nil {
		t.Errorf("Cleanup after stop: %v", err)
	}
}
