package fsm

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

const (
	vip1 = "198.51.100.10"
	vip2 = "198.51.100.20"
	rs1  = "192.0.2.11"
	rs2  = "192.0.2.12"
	nrs1 = "203.0.113.11"
	gw   = "203.0.113.254"
)

var (
	dr  = raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR
	tun = raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN
	nat = raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT
)

// TestSteps runs ordered commands against one FSM, as a user would issue
// them, checking each result and whether the generation moved.
func TestSteps(t *testing.T) {
	f := newNode(t)
	steps := []struct {
		desc    string
		cmd     *raftlbv1.Command
		code    codes.Code
		msg     string // substring of the result message
		bumpGen bool
	}{
		{desc: "director d1", cmd: upsertDirector("d1", "192.0.2.1", false), bumpGen: true},
		{desc: "director d1 again is a no-op", cmd: upsertDirector("d1", "192.0.2.1", false)},
		{desc: "create service", cmd: createSvc(vip1, 80, ""), bumpGen: true},
		{desc: "duplicate service", cmd: createSvc(vip1, 80, ""), code: codes.AlreadyExists, msg: "198.51.100.10:80/TCP already exists"},
		{desc: "realserver on missing service", cmd: addRS(vip2, 80, rs1, 0, dr), code: codes.NotFound, msg: "198.51.100.20:80/TCP not found"},
		{desc: "add realserver", cmd: addRS(vip1, 80, rs1, 0, dr), bumpGen: true},
		{desc: "duplicate realserver (port 0 is the service port)", cmd: addRS(vip1, 80, rs1, 80, dr), code: codes.AlreadyExists, msg: "192.0.2.11:80"},
		{desc: "DR cannot change port", cmd: addRS(vip1, 80, rs2, 8080, dr), code: codes.InvalidArgument, msg: "realserver.port"},
		{desc: "NAT may change port", cmd: addRS(vip1, 80, nrs1, 8080, nat), bumpGen: true},
		{desc: "preferred owner unknown", cmd: createSvc(vip2, 80, "d9"), code: codes.FailedPrecondition, msg: "preferred_owner"},
		{desc: "witness", cmd: upsertDirector("w1", "192.0.2.3", true), bumpGen: true},
		{desc: "preferred owner is a witness", cmd: createSvc(vip2, 80, "w1"), code: codes.FailedPrecondition, msg: "witness"},
		{desc: "gateway", cmd: setGateway(gw, ""), bumpGen: true},
		{desc: "service on the gateway", cmd: createSvc(gw, 80, ""), code: codes.FailedPrecondition, msg: "NAT gateway"},
		{desc: "assign with stale epoch", cmd: assign(vip1, "d1", 1), code: codes.FailedPrecondition, msg: "epoch"},
		{desc: "assign to a witness", cmd: assign(vip1, "w1", 3), code: codes.FailedPrecondition, msg: "owner"},
		{desc: "delete missing service", cmd: deleteSvc(vip2, 80), code: codes.NotFound},
		{desc: "delete service", cmd: deleteSvc(vip1, 80), bumpGen: true},
		{desc: "remove unknown director", cmd: removeDirector("d9"), code: codes.NotFound},
		{desc: "empty command", cmd: &raftlbv1.Command{}, code: codes.Internal, msg: "unknown command"},
	}
	for _, s := range steps {
		before := f.Generation()
		snap := snapshotBytes(t, f.FSM)
		res := f.apply(t, s.cmd)
		if got := codeOf(res); got != s.code {
			t.Fatalf("%s: code = %v (%q), want %v", s.desc, got, res.GetMessage(), s.code)
		}
		if !strings.Contains(res.GetMessage(), s.msg) {
			t.Errorf("%s: message %q does not contain %q", s.desc, res.GetMessage(), s.msg)
		}
		after := f.Generation()
		if got := after != before; got != s.bumpGen {
			t.Errorf("%s: generation %d -> %d, want bumped=%v", s.desc, before, after, s.bumpGen)
		}
		if res.GetGeneration() != after {
			t.Errorf("%s: result generation %d, want %d", s.desc, res.GetGeneration(), after)
		}
		if s.code != codes.OK && !bytes.Equal(snap, snapshotBytes(t, f.FSM)) {
			t.Errorf("%s: rejected command changed the state", s.desc)
		}
	}
	if got := f.Services(); len(got) != 0 {
		t.Errorf("services left: %v", got)
	}
	if diff := cmp.Diff([]*raftlbv1.Address{{
		Address: gw, Kind: raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY, Owner: "d1", Epoch: 6,
	}}, f.Addresses(), protocmp.Transform()); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
}

func TestCreateServiceDefaults(t *testing.T) {
	f := newNode(t)
	f.mustApply(t, upsertDirector("d2", "192.0.2.2", false))
	f.mustApply(t, upsertDirector("d1", "192.0.2.1", false))
	c := createSvc(vip1, 80, "d2")
	c.GetCreateService().Service.HealthCheck = &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP}
	res := f.mustApply(t, c)
	want := &raftlbv1.VirtualService{
		Key:       key(vip1, 80),
		Scheduler: raftlbv1.Scheduler_SCHEDULER_MH,
		Timeouts:  &raftlbv1.Timeouts{TcpEstablishedSeconds: 900, TcpFinSeconds: 120, TcpCloseSeconds: 10, UdpSeconds: 300},
		HealthCheck: &raftlbv1.HealthCheck{
			Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP, IntervalMs: 2000, TimeoutMs: 1000,
			Rise: 2, Fall: 3, Path: "/", ExpectedStatus: 200,
		},
		FailurePolicy:   raftlbv1.FailurePolicy_FAILURE_POLICY_KEEP,
		MaglevTableSize: 65537,
	}
	if diff := cmp.Diff(want, res.GetService(), protocmp.Transform()); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	got, err := f.Service(key(vip1, 80))
	if err != nil {
		t.Fatalf("Service: %v", err)
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("Service (-want +got):\n%s", diff)
	}
	if _, err := f.Service(key(vip2, 80)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Service(missing) = %v, want ErrNotFound", err)
	}
	if _, err := f.Service(key("300.1.1.1", 80)); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Service(bad key) = %v, want ErrInvalidArgument", err)
	}
	wantAddr := []*raftlbv1.Address{{
		Address: vip1, Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP, PreferredOwner: "d2", Owner: "d2", Epoch: 3,
	}}
	if diff := cmp.Diff(wantAddr, f.Addresses(), protocmp.Transform()); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}

	// The realserver defaults, and the verdicts that fill its health.
	f.mustApply(t, addRS(vip1, 80, rs1, 0, dr))
	f.mustApply(t, &raftlbv1.Command{Op: &raftlbv1.Command_HealthVerdicts{HealthVerdicts: &raftlbv1.HealthVerdicts{
		Verdicts: []*raftlbv1.HealthVerdict{
			{Service: key(vip1, 80), Address: rs1, State: raftlbv1.HealthState_HEALTH_STATE_UP},
			{Service: key(vip1, 80), Address: rs2, State: raftlbv1.HealthState_HEALTH_STATE_UP}, // gone: skipped
		},
	}}})
	got, _ = f.Service(key(vip1, 80))
	wantRS := []*raftlbv1.Realserver{{
		Address: rs1, Port: 80, Weight: 1, Method: dr,
		AdminState: raftlbv1.AdminState_ADMIN_STATE_ACTIVE, Health: raftlbv1.HealthState_HEALTH_STATE_UP,
	}}
	if diff := cmp.Diff(wantRS, got.GetRealservers(), protocmp.Transform()); diff != "" {
		t.Errorf("realservers (-want +got):\n%s", diff)
	}

	// A new health check resets verdicts; the realservers stay.
	up := &raftlbv1.Command{Op: &raftlbv1.Command_UpdateService{UpdateService: &raftlbv1.UpdateServiceRequest{
		Service: &raftlbv1.VirtualService{Key: key(vip1, 80), Scheduler: raftlbv1.Scheduler_SCHEDULER_WRR},
	}}}
	f.mustApply(t, up)
	got, _ = f.Service(key(vip1, 80))
	wantRS[0].Health = raftlbv1.HealthState_HEALTH_STATE_UNKNOWN
	if diff := cmp.Diff(wantRS, got.GetRealservers(), protocmp.Transform()); diff != "" {
		t.Errorf("realservers after update (-want +got):\n%s", diff)
	}
	if got.GetScheduler() != raftlbv1.Scheduler_SCHEDULER_WRR || got.GetHealthCheck().GetType() != raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_NONE {
		t.Errorf("updated service = %v", got)
	}
	gen := f.Generation()
	f.mustApply(t, up)
	if f.Generation() != gen {
		t.Errorf("an identical update moved the generation")
	}
}

// TestValidateCommand checks every static rule: InvalidArgument naming the
// field, from ValidateCommand and from Apply, with the state unchanged.
func TestValidateCommand(t *testing.T) {
	svc := func(mod func(*raftlbv1.VirtualService)) *raftlbv1.Command {
		s := &raftlbv1.VirtualService{Key: key(vip1, 80)}
		mod(s)
		return &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{Service: s}}}
	}
	hc := func(mod func(*raftlbv1.HealthCheck)) *raftlbv1.Command {
		return svc(func(s *raftlbv1.VirtualService) {
			s.HealthCheck = &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP}
			mod(s.HealthCheck)
		})
	}
	rs := func(mod func(*raftlbv1.Realserver)) *raftlbv1.Command {
		c := addRS(vip1, 80, rs1, 0, dr)
		mod(c.GetAddRealserver().GetRealserver())
		return c
	}
	cases := []struct {
		desc  string
		cmd   *raftlbv1.Command
		field string // the message must start with it
	}{
		{"no service", &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{}}}, "service: required"},
		{"no key", svc(func(s *raftlbv1.VirtualService) { s.Key = nil }), "service.key: required"},
		{"vip not an address", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "300.1.1.1" }), `service.key.vip: "300.1.1.1" is not an IPv4 address`},
		{"vip empty", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "" }), "service.key.vip: required"},
		{"vip IPv6", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "2001:db8::1" }), "service.key.vip"},
		{"vip IPv4-mapped", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "::ffff:198.51.100.1" }), "service.key.vip"},
		{"vip leading zeros", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "198.51.100.010" }), "service.key.vip"},
		{"vip unspecified", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "0.0.0.0" }), "service.key.vip: \"0.0.0.0\" is the unspecified"},
		{"vip loopback", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "127.0.0.1" }), "service.key.vip: \"127.0.0.1\" is a loopback"},
		{"vip multicast", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "224.0.0.1" }), "service.key.vip: \"224.0.0.1\" is a multicast"},
		{"vip broadcast", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "255.255.255.255" }), "service.key.vip: \"255.255.255.255\" is the broadcast"},
		{"vip link-local", svc(func(s *raftlbv1.VirtualService) { s.Key.Vip = "169.254.1.1" }), "service.key.vip: \"169.254.1.1\" is a link-local"},
		{"port 0", svc(func(s *raftlbv1.VirtualService) { s.Key.Port = 0 }), "service.key.port: required"},
		{"port too big", svc(func(s *raftlbv1.VirtualService) { s.Key.Port = 65536 }), "service.key.port: 65536 is out of range"},
		{"protocol missing", svc(func(s *raftlbv1.VirtualService) { s.Key.Protocol = 0 }), "service.key.protocol: required"},
		{"protocol unknown", svc(func(s *raftlbv1.VirtualService) { s.Key.Protocol = 9 }), "service.key.protocol: unknown"},
		{"scheduler unknown", svc(func(s *raftlbv1.VirtualService) { s.Scheduler = 42 }), "service.scheduler: unknown"},
		{"timeout too long", svc(func(s *raftlbv1.VirtualService) {
			s.Timeouts = &raftlbv1.Timeouts{UdpSeconds: MaxTimeoutSeconds + 1}
		}), "service.timeouts.udp_seconds: "},
		{"established too long", svc(func(s *raftlbv1.VirtualService) {
			s.Timeouts = &raftlbv1.Timeouts{TcpEstablishedSeconds: MaxTimeoutSeconds + 1}
		}), "service.timeouts.tcp_established_seconds: "},
		{"persistence too long", svc(func(s *raftlbv1.VirtualService) { s.PersistenceSeconds = 86401 }), "service.persistence_seconds: "},
		{"failure policy unknown", svc(func(s *raftlbv1.VirtualService) { s.FailurePolicy = 7 }), "service.failure_policy: "},
		{"maglev not prime", svc(func(s *raftlbv1.VirtualService) { s.MaglevTableSize = 65536 }), "service.maglev_table_size: 65536 is not prime"},
		{"maglev too small", svc(func(s *raftlbv1.VirtualService) { s.MaglevTableSize = 13 }), "service.maglev_table_size: 13 is out of range"},
		{"maglev too big", svc(func(s *raftlbv1.VirtualService) { s.MaglevTableSize = 1000033 }), "service.maglev_table_size: "},
		{"health type unknown", svc(func(s *raftlbv1.VirtualService) { s.HealthCheck = &raftlbv1.HealthCheck{Type: 9} }), "service.health_check.type: "},
		{"health interval short", hc(func(h *raftlbv1.HealthCheck) { h.IntervalMs = 50 }), "service.health_check.interval_ms: 50 is out of range"},
		{"health default timeout above interval", hc(func(h *raftlbv1.HealthCheck) { h.IntervalMs = 500 }), "service.health_check.timeout_ms: 1000 (the default) must be less than interval_ms 500"},
		{"health timeout equals interval", hc(func(h *raftlbv1.HealthCheck) { h.IntervalMs, h.TimeoutMs = 1000, 1000 }), "service.health_check.timeout_ms: "},
		{"health rise", hc(func(h *raftlbv1.HealthCheck) { h.Rise = 101 }), "service.health_check.rise: "},
		{"health fall", hc(func(h *raftlbv1.HealthCheck) { h.Fall = 1000 }), "service.health_check.fall: "},
		{"health path", hc(func(h *raftlbv1.HealthCheck) { h.Path = "healthz" }), `service.health_check.path: "healthz" must start with "/"`},
		{"health path space", hc(func(h *raftlbv1.HealthCheck) { h.Path = "/a b" }), "service.health_check.path: "},
		{"health status", hc(func(h *raftlbv1.HealthCheck) { h.ExpectedStatus = 99 }), "service.health_check.expected_status: 99 is not an HTTP status"},
		{"health status high", hc(func(h *raftlbv1.HealthCheck) { h.ExpectedStatus = 600 }), "service.health_check.expected_status: "},
		{"health port", hc(func(h *raftlbv1.HealthCheck) { h.Port = 70000 }), "service.health_check.port: "},
		{"preferred owner format", &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{
			Service: &raftlbv1.VirtualService{Key: key(vip1, 80)}, PreferredOwner: "d 1",
		}}}, "preferred_owner: "},
		{"update without key", &raftlbv1.Command{Op: &raftlbv1.Command_UpdateService{UpdateService: &raftlbv1.UpdateServiceRequest{
			Service: &raftlbv1.VirtualService{},
		}}}, "service.key: required"},
		{"delete bad key", &raftlbv1.Command{Op: &raftlbv1.Command_DeleteService{DeleteService: &raftlbv1.DeleteServiceRequest{Key: key(vip1, 0)}}}, "key.port: required"},
		{"realserver missing", &raftlbv1.Command{Op: &raftlbv1.Command_AddRealserver{AddRealserver: &raftlbv1.AddRealserverRequest{Service: key(vip1, 80)}}}, "realserver: required"},
		{"realserver service key", func() *raftlbv1.Command {
			c := rs(func(*raftlbv1.Realserver) {})
			c.GetAddRealserver().Service.Vip = "x"
			return c
		}(), "service.vip: "},
		{"realserver address", rs(func(r *raftlbv1.Realserver) { r.Address = "192.0.2" }), `realserver.address: "192.0.2" is not an IPv4 address`},
		{"realserver weight", rs(func(r *raftlbv1.Realserver) { r.Weight = 65536 }), "realserver.weight: 65536 is out of range"},
		{"realserver method missing", rs(func(r *raftlbv1.Realserver) { r.Method = 0 }), "realserver.method: required"},
		{"realserver method unknown", rs(func(r *raftlbv1.Realserver) { r.Method = 8 }), "realserver.method: unknown"},
		{"realserver TUN port", rs(func(r *raftlbv1.Realserver) { r.Method, r.Port = tun, 81 }), "realserver.port: 81 differs from the service port 80, which TUN cannot change"},
		{"realserver port range", rs(func(r *raftlbv1.Realserver) { r.Method, r.Port = nat, 65536 }), "realserver.port: "},
		{"realserver admin state", rs(func(r *raftlbv1.Realserver) { r.AdminState = 5 }), "realserver.admin_state: "},
		{"update realserver DR port", func() *raftlbv1.Command {
			return &raftlbv1.Command{Op: &raftlbv1.Command_UpdateRealserver{UpdateRealserver: &raftlbv1.UpdateRealserverRequest{
				Service: key(vip1, 80), Realserver: &raftlbv1.Realserver{Address: nrs1, Port: 8080, Method: dr},
			}}}
		}(), "realserver.port: "},
		{"remove realserver address", &raftlbv1.Command{Op: &raftlbv1.Command_RemoveRealserver{RemoveRealserver: &raftlbv1.RemoveRealserverRequest{
			Service: key(vip1, 80), Address: "",
		}}}, "address: required"},
		{"set address missing", &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: &raftlbv1.SetAddressRequest{}}}, "address: required"},
		{"set address kind", &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: &raftlbv1.SetAddressRequest{
			Address: &raftlbv1.Address{Address: vip1},
		}}}, "address.kind: required"},
		{"set address bad", func() *raftlbv1.Command { c := setGateway("1.2.3.4.5", ""); return c }(), "address.address: "},
		{"director id", upsertDirector("", "192.0.2.1", false), "director.id: required"},
		{"director api address", func() *raftlbv1.Command {
			c := upsertDirector("d1", "192.0.2.1", false)
			c.GetUpsertDirector().Director.ApiAddress = "nohostport"
			return c
		}(), "director.api_address: "},
		{"director front address", upsertDirector("d1", "localhost", false), "director.front_address: "},
		{"remove director id", removeDirector(""), "id: required"},
		{"assign nothing", &raftlbv1.Command{Op: &raftlbv1.Command_AssignAddresses{AssignAddresses: &raftlbv1.AssignAddresses{}}}, "addresses: required"},
		{"assign owner", assign(vip1, "", 1), "addresses[0].owner: required"},
		{"assign epoch", assign(vip1, "d1", 0), "addresses[0].epoch: required"},
		{"assign twice", &raftlbv1.Command{Op: &raftlbv1.Command_AssignAddresses{AssignAddresses: &raftlbv1.AssignAddresses{
			Addresses: []*raftlbv1.Address{{Address: vip1, Owner: "d1", Epoch: 2}, {Address: vip1, Owner: "d1", Epoch: 2}},
		}}}, "addresses[1].address: "},
		{"conn protocol", connBatch([]*raftlbv1.ConnEntry{{ClientPort: 1}}, nil), "upserts[0].protocol: required"},
		{"conn port", connBatch(nil, []*raftlbv1.ConnEntry{{Protocol: 1, Vport: 70000}}), "deletes[0].vport: "},
		{"conn state", connBatch([]*raftlbv1.ConnEntry{{Protocol: 1, State: 77}}, nil), "upserts[0].state: "},
		{"flush vip", &raftlbv1.Command{Op: &raftlbv1.Command_FlushConnections{FlushConnections: &raftlbv1.FlushConnectionsRequest{Vip: "nope"}}}, "vip: "},
		{"register id", register(""), "id: required"},
		{"register address", register("rs1", "192.0.2.300"), "interfaces[0].addresses[0]: "},
		{"register mac", func() *raftlbv1.Command {
			c := register("rs1")
			c.GetRegisterAgent().Interfaces[0].Mac = "zz"
			return c
		}(), "interfaces[0].mac: "},
		{"report decap", &raftlbv1.Command{Op: &raftlbv1.Command_ReportAgentStatus{ReportAgentStatus: &raftlbv1.ReportStatusRequest{
			Id: "rs1", DecapMode: "gre",
		}}}, "decap_mode: "},
		{"report vip", &raftlbv1.Command{Op: &raftlbv1.Command_ReportAgentStatus{ReportAgentStatus: &raftlbv1.ReportStatusRequest{
			Id: "rs1", Vips: []*raftlbv1.VipResult{{Vip: "v"}},
		}}}, "vips[0].vip: "},
		{"verdict state", &raftlbv1.Command{Op: &raftlbv1.Command_HealthVerdicts{HealthVerdicts: &raftlbv1.HealthVerdicts{
			Verdicts: []*raftlbv1.HealthVerdict{{Service: key(vip1, 80), Address: rs1}},
		}}}, "verdicts[0].state: "},
		{"verdict key", &raftlbv1.Command{Op: &raftlbv1.Command_HealthVerdicts{HealthVerdicts: &raftlbv1.HealthVerdicts{
			Verdicts: []*raftlbv1.HealthVerdict{{Service: key(vip1, 0), Address: rs1, State: 2}},
		}}}, "verdicts[0].service.port: "},
	}

	f := newNode(t)
	f.mustApply(t, upsertDirector("d1", "192.0.2.1", false))
	f.mustApply(t, createSvc(vip1, 80, ""))
	f.mustApply(t, addRS(vip1, 80, nrs1, 8080, nat))
	f.mustApply(t, register("rs1", rs1))
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			err := ValidateCommand(tc.cmd)
			var fe *Error
			if !errors.As(err, &fe) || fe.Code != codes.InvalidArgument {
				t.Fatalf("ValidateCommand = %v, want InvalidArgument", err)
			}
			if !strings.HasPrefix(err.Error(), tc.field) {
				t.Errorf("ValidateCommand = %q, want it to start with %q", err, tc.field)
			}
			if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || st.Message() != err.Error() {
				t.Errorf("gRPC status = %v", st)
			}
			before := snapshotBytes(t, f.FSM)
			res := f.apply(t, tc.cmd)
			if codeOf(res) != codes.InvalidArgument || res.GetMessage() != err.Error() {
				t.Errorf("Apply = %v, want the same InvalidArgument", res)
			}
			if !bytes.Equal(before, snapshotBytes(t, f.FSM)) {
				t.Errorf("rejected command changed the state")
			}
		})
	}
}

func TestValidateCommandAccepts(t *testing.T) {
	for _, c := range []*raftlbv1.Command{
		createSvc(vip1, 80, "d1"),
		addRS(vip1, 80, rs1, 80, tun),
		addRS(vip1, 80, rs1, 8080, nat),
		setGateway(gw, ""),
		upsertDirector("d1.example.com", "192.0.2.1", true),
		register("rs1", "192.0.2.11/24", "fe80::1/64", "192.0.2.12"),
		connBatch([]*raftlbv1.ConnEntry{conn(vip1, 80, "192.0.2.100", 40000, rs1)}, nil),
		{Op: &raftlbv1.Command_FlushConnections{FlushConnections: &raftlbv1.FlushConnectionsRequest{}}},
	} {
		if err := ValidateCommand(c); err != nil {
			t.Errorf("ValidateCommand(%v) = %v", c, err)
		}
	}
	dflt := createSvc(vip1, 80, "")
	dflt.GetCreateService().Service.MaglevTableSize = DefaultMaglevTableSize
	if err := ValidateCommand(dflt); err != nil {
		t.Errorf("default Maglev size: %v", err)
	}
}

func TestUndecodableAndUnknown(t *testing.T) {
	f := newNode(t)
	f.mustApply(t, createSvc(vip1, 80, ""))
	before := snapshotBytes(t, f.FSM)
	for name, data := range map[string][]byte{
		"empty":            nil,
		"garbage":          {0xff, 0xff, 0xff},
		"future operation": {0xaa, 0x06, 0x00}, // field 101, empty bytes: an op this version lacks
	} {
		res := f.applyBytes(t, data)
		if codeOf(res) != codes.Internal {
			t.Errorf("%s: code = %v, want Internal", name, codeOf(res))
		}
		if !errors.Is(ResultError(res), ErrInternal) {
			t.Errorf("%s: ResultError = %v, want ErrInternal", name, ResultError(res))
		}
	}
	if !bytes.Equal(before, snapshotBytes(t, f.FSM)) {
		t.Errorf("rejected commands changed the state")
	}
	if err := ValidateCommand(nil); !errors.Is(err, ErrInternal) {
		t.Errorf("ValidateCommand(nil) = %v", err)
	}
}

func TestResults(t *testing.T) {
	if _, err := ResultOf("x"); !errors.Is(err, ErrInternal) {
		t.Errorf("ResultOf(string) = %v", err)
	}
	if err := ResultError(nil); !errors.Is(err, ErrInternal) {
		t.Errorf("ResultError(nil) = %v", err)
	}
	if r := ToResult(nil); r.GetCode() != 0 {
		t.Errorf("ToResult(nil) = %v", r)
	}
	r := ToResult(notFound("key", "service x not found"))
	err := ResultError(r)
	if !errors.Is(err, ErrNotFound) || err.Error() != "key: service x not found" {
		t.Errorf("round trip = %v", err)
	}
	if st, _ := status.FromError(err); st.Code() != codes.NotFound {
		t.Errorf("status = %v", st)
	}
}

// buildLog is a log touching every kind of state.
func buildLog() []*raftlbv1.Command {
	return []*raftlbv1.Command{
		upsertDirector("d2", "192.0.2.2", false),
		upsertDirector("d1", "192.0.2.1", false),
		upsertDirector("w1", "192.0.2.3", true),
		createSvc(vip2, 443, ""),
		createSvc(vip1, 80, "d2"),
		createSvc(vip1, 53, ""),
		addRS(vip1, 80, rs2, 0, dr),
		addRS(vip1, 80, rs1, 0, tun),
		addRS(vip2, 443, nrs1, 8443, nat),
		setGateway(gw, ""),
		register("rs1", rs1+"/24"),
		register("rs3", nrs1),
		{UnixNano: 7e9, Op: &raftlbv1.Command_ReportAgentStatus{ReportAgentStatus: &raftlbv1.ReportStatusRequest{
			Id: "rs1", AppliedGeneration: 9, DecapMode: "bpf", Vips: []*raftlbv1.VipResult{{Vip: vip1, Applied: true}},
		}}},
		{Op: &raftlbv1.Command_HealthVerdicts{HealthVerdicts: &raftlbv1.HealthVerdicts{Verdicts: []*raftlbv1.HealthVerdict{
			{Service: key(vip1, 80), Address: rs2, State: raftlbv1.HealthState_HEALTH_STATE_DOWN},
		}}}},
		connBatchFrom("d2", []*raftlbv1.ConnEntry{
			conn(vip1, 80, "192.0.2.100", 40001, rs1),
			conn(vip1, 80, "192.0.2.100", 40000, rs2),
		}, nil),
		connBatchFrom("d1", []*raftlbv1.ConnEntry{conn(vip2, 443, "192.0.2.101", 40000, nrs1)}, nil),
		assign(vip2, "d2", 5),
	}
}

func applyLog(t *testing.T, f *node, log []*raftlbv1.Command) {
	t.Helper()
	for _, c := range log {
		f.mustApply(t, c)
	}
}

type reads struct {
	Generation  uint64
	Services    []*raftlbv1.VirtualService
	Addresses   []*raftlbv1.Address
	Directors   []*raftlbv1.Director
	Agents      []*raftlbv1.AgentInfo
	Connections []*raftlbv1.ConnEntry
	Counts      Counts
	Config      *raftlbv1.WatchConfigResponse
}

func readAll(f *FSM) reads {
	cfg, _ := f.AgentConfig("rs1")
	return reads{f.Generation(), f.Services(), f.Addresses(), f.Directors(), f.Agents(), f.Connections(), f.Counts(), cfg}
}

func TestSnapshotRestore(t *testing.T) {
	f := newNode(t)
	applyLog(t, f, buildLog())
	if len(f.Connections()) != 3 || len(f.Agents()) != 2 {
		t.Fatalf("log did not build the state: %v", readAll(f.FSM))
	}
	data := snapshotBytes(t, f.FSM)

	g := newNode(t)
	restore(t, g.FSM, data)
	if diff := cmp.Diff(readAll(f.FSM), readAll(g.FSM), protocmp.Transform()); diff != "" {
		t.Errorf("restored reads (-want +got):\n%s", diff)
	}
	if !bytes.Equal(data, snapshotBytes(t, g.FSM)) {
		t.Errorf("snapshot of the restored state differs")
	}

	// Restore discards all previous state, whatever it was.
	h := newNode(t)
	h.mustApply(t, upsertDirector("d9", "192.0.2.9", false))
	h.mustApply(t, createSvc("198.51.100.99", 8080, ""))
	h.mustApply(t, connBatchFrom("d9", []*raftlbv1.ConnEntry{conn("198.51.100.99", 8080, "192.0.2.100", 1, rs1)}, nil))
	restore(t, h.FSM, data)
	if diff := cmp.Diff(readAll(f.FSM), readAll(h.FSM), protocmp.Transform()); diff != "" {
		t.Errorf("state after restoring over other state (-want +got):\n%s", diff)
	}

	// A broken snapshot is refused and the state stays.
	if err := h.Restore(nopCloser(data[:len(data)/2])); err == nil {
		t.Errorf("Restore of a truncated snapshot succeeded")
	}
	if diff := cmp.Diff(readAll(f.FSM), readAll(h.FSM), protocmp.Transform()); diff != "" {
		t.Errorf("state after a failed restore (-want +got):\n%s", diff)
	}
}

func TestSnapshotChunks(t *testing.T) {
	f := newNode(t)
	f.mustApply(t, upsertDirector("d1", "192.0.2.1", false))
	f.mustApply(t, createSvc(vip1, 80, ""))
	var batch []*raftlbv1.ConnEntry
	for i := range 3*snapshotChunk + 5 {
		batch = append(batch, conn(vip1, 80, "192.0.2.100", uint32(i%65535+1), rs1))
		batch[len(batch)-1].ClientIp += uint32(i / 65535)
	}
	f.mustApply(t, connBatchFrom("d1", batch, nil))
	data := snapshotBytes(t, f.FSM)
	g := newNode(t)
	restore(t, g.FSM, data)
	if got, want := g.Counts().Connections, len(batch); got != want {
		t.Errorf("restored %d connections, want %d", got, want)
	}
	if !bytes.Equal(data, snapshotBytes(t, g.FSM)) {
		t.Errorf("snapshot of the restored state differs")
	}
}

// TestDeterminism applies the same log to two FSMs, one entry at a time and
// in batches, and expects identical snapshot bytes.
func TestDeterminism(t *testing.T) {
	log := buildLog()
	a := newNode(t)
	applyLog(t, a, log)

	b := New(nil)
	var logs []*raft.Log
	for i, c := range log {
		logs = append(logs, &raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: mustMarshal(t, c)})
		if i == 3 {
			logs = append(logs, &raft.Log{Index: uint64(i + 1), Type: raft.LogConfiguration})
		}
	}
	resps := b.ApplyBatch(logs)
	if len(resps) != len(logs) {
		t.Fatalf("ApplyBatch returned %d responses for %d logs", len(resps), len(logs))
	}
	for i, r := range resps {
		if logs[i].Type != raft.LogCommand {
			continue
		}
		if _, err := ResultOf(r); err != nil {
			t.Errorf("batch entry %d: %v", i, err)
		}
	}
	for range 3 {
		if !bytes.Equal(snapshotBytes(t, a.FSM), snapshotBytes(t, b)) {
			t.Fatalf("snapshots differ")
		}
	}
}

// TestConcurrentReads reads from many goroutines while Apply and Restore run
// (meaningful under -race).
func TestConcurrentReads(t *testing.T) {
	f := newNode(t)
	applyLog(t, f, buildLog())
	data := snapshotBytes(t, f.FSM)

	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				r := readAll(f.FSM)
				for _, s := range r.Services {
					s.Realservers = nil // callers own their copies
				}
				_, _ = f.Service(key(vip1, 80))
				select {
				case <-f.Changed():
				case <-done:
					return
				}
			}
		})
	}
	for i := range 200 {
		switch i % 3 {
		case 0:
			restore(t, f.FSM, data)
		case 1:
			f.apply(t, createSvc("198.51.100.77", uint32(1000+i), ""))
		case 2:
			f.apply(t, connBatch([]*raftlbv1.ConnEntry{conn(vip1, 80, "192.0.2.100", uint32(i), rs1)}, nil))
			f.apply(t, addRS(vip1, 80, "192.0.2.50", 0, dr)) // moves the generation
		}
	}
	close(done)
	wg.Wait()
}

func TestChanged(t *testing.T) {
	f := newNode(t)
	ch := f.Changed()
	f.mustApply(t, register("rs1", rs1))
	select {
	case <-ch:
	default:
		t.Fatalf("Changed not closed by a registration")
	}
	ch = f.Changed()
	f.mustApply(t, &raftlbv1.Command{Op: &raftlbv1.Command_ReportAgentStatus{ReportAgentStatus: &raftlbv1.ReportStatusRequest{Id: "rs1", AppliedGeneration: 1}}})
	f.mustApply(t, register("rs1", rs1)) // same interfaces: a sign of life only
	f.mustApply(t, connBatch([]*raftlbv1.ConnEntry{conn(vip1, 80, "192.0.2.100", 1, rs1)}, nil))
	select {
	case <-ch:
		t.Fatalf("status reports, re-registrations and connections must not move the generation")
	default:
	}
	restore(t, f.FSM, snapshotBytes(t, f.FSM))
	select {
	case <-ch:
	default:
		t.Fatalf("Changed not closed by Restore")
	}
	if got := f.Agents()[0].GetLastSeenUnixMs(); got != 5000 {
		t.Errorf("last seen = %d, want 5000", got)
	}
}
