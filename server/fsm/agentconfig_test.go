package fsm

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func TestAgentConfig(t *testing.T) {
	f := newNode(t)
	applyLog(t, f, []*raftlbv1.Command{
		upsertDirector("d2", "192.0.2.2", false),
		upsertDirector("d1", "192.0.2.1", false),
		upsertDirector("w1", "192.0.2.3", true),
		createSvc(vip1, 80, ""),
		createSvc(vip1, 7, ""),
		createSvc(vip2, 80, ""),
		createSvc("198.51.100.30", 80, ""),
		addRS(vip1, 80, rs1, 0, dr),
		addRS(vip1, 7, rs1, 0, dr), // same VIP and method: listed once
		addRS(vip2, 80, rs1, 0, tun),
		addRS(vip2, 80, rs2, 0, dr), // another host
		addRS("198.51.100.30", 80, nrs1, 8080, nat),
		addRS("198.51.100.30", 80, nrs1, 0, nat), // a second port of the same source
		{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{Service: &raftlbv1.VirtualService{
			Key: &raftlbv1.ServiceKey{Vip: "198.51.100.30", Port: 53, Protocol: raftlbv1.Protocol_PROTOCOL_UDP}}}}},
		{Op: &raftlbv1.Command_AddRealserver{AddRealserver: &raftlbv1.AddRealserverRequest{
			Service:    &raftlbv1.ServiceKey{Vip: "198.51.100.30", Port: 53, Protocol: raftlbv1.Protocol_PROTOCOL_UDP},
			Realserver: &raftlbv1.Realserver{Address: nrs1, Weight: 1, Method: nat}}}},
		register("dr-only", rs2),
		register("rs1", "192.0.2.11/24", "fe80::1/64"),
		{Op: &raftlbv1.Command_RegisterAgent{RegisterAgent: &raftlbv1.RegisterRequest{Id: "rs3", Interfaces: []*raftlbv1.Interface{
			{Name: "eth0", Addresses: []string{"192.0.2.13/24"}},
			{Name: "eth1", Addresses: []string{nrs1 + "/24"}},
		}}}},
		register("idle", "192.0.2.99"),
	})
	gen := f.Generation()
	tests := []struct {
		id   string
		want *raftlbv1.WatchConfigResponse
	}{
		{"rs1", &raftlbv1.WatchConfigResponse{
			Generation:    gen,
			Vips:          []*raftlbv1.AgentVip{{Vip: vip1, Method: dr}, {Vip: vip2, Method: tun}},
			TunnelSources: []string{"192.0.2.1", "192.0.2.2"},
		}},
		{"dr-only", &raftlbv1.WatchConfigResponse{Generation: gen, Vips: []*raftlbv1.AgentVip{{Vip: vip2, Method: dr}}}},
		{"rs3", &raftlbv1.WatchConfigResponse{Generation: gen, NatSources: []string{nrs1}, NatServices: []*raftlbv1.NatService{
			{Source: nrs1, Protocol: raftlbv1.Protocol_PROTOCOL_TCP, Port: 80},
			{Source: nrs1, Protocol: raftlbv1.Protocol_PROTOCOL_TCP, Port: 8080},
			{Source: nrs1, Protocol: raftlbv1.Protocol_PROTOCOL_UDP, Port: 53},
		}}},
		{"idle", &raftlbv1.WatchConfigResponse{Generation: gen}},
	}
	check := func() {
		t.Helper()
		for _, tc := range tests {
			got, err := f.AgentConfig(tc.id)
			if err != nil {
				t.Fatalf("AgentConfig(%s): %v", tc.id, err)
			}
			if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("AgentConfig(%s) (-want +got):\n%s", tc.id, diff)
			}
		}
	}
	check()

	// With a gateway, NAT realservers learn it.
	f.mustApply(t, setGateway(gw, ""))
	gen = f.Generation()
	for _, tc := range tests {
		tc.want.Generation = gen
	}
	tests[2].want.NatGateway = gw
	check()

	if _, err := f.AgentConfig("nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("AgentConfig(unregistered) = %v, want ErrNotFound", err)
	}
}
