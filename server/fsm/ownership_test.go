package fsm

import (
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// owners maps address to "owner@epoch".
func owners(f *FSM) map[string]string {
	out := make(map[string]string)
	for _, a := range f.Addresses() {
		out[a.GetAddress()] = a.GetOwner() + "@" + strconv.FormatUint(a.GetEpoch(), 10)
	}
	return out
}

// TestOwnership walks addresses through creation, the NAT group, removal of
// their owner and reassignment, checking owners and epochs at each step.
func TestOwnership(t *testing.T) {
	f := newNode(t)
	steps := []struct {
		desc string
		cmd  *raftlbv1.Command
		code codes.Code
		want map[string]string
	}{
		{desc: "VIP with no director stays unowned", cmd: createSvc(vip1, 80, ""), want: map[string]string{vip1: "@1"}},
		{desc: "a witness owns nothing", cmd: upsertDirector("w1", "192.0.2.3", true), want: map[string]string{vip1: "@1"}},
		{desc: "an announcement assigns nothing (the reassigner does)", cmd: upsertDirector("d2", "192.0.2.2", false), want: map[string]string{vip1: "@1"}},
		{desc: "only a full director may be assigned", cmd: assign(vip1, "w1", 2), code: codes.FailedPrecondition, want: map[string]string{vip1: "@1"}},
		{desc: "the reassigner assigns it", cmd: assign(vip1, "d2", 2), want: map[string]string{vip1: "d2@2"}},
		{desc: "lower id does not steal", cmd: upsertDirector("d1", "192.0.2.1", false), want: map[string]string{vip1: "d2@2"}},
		{desc: "preferred owner at creation", cmd: createSvc(vip2, 80, "d1"), want: map[string]string{vip1: "d2@2", vip2: "d1@6"}},
		{desc: "gateway joins the NAT group (none yet): lowest id", cmd: setGateway(gw, ""), want: map[string]string{vip1: "d2@2", vip2: "d1@6", gw: "d1@7"}},
		{desc: "a VIP joining the group under another owner loses it", cmd: addRS(vip1, 80, nrs1, 0, nat), want: map[string]string{vip1: "@3", vip2: "d1@6", gw: "d1@7"}},
		{desc: "the reassigner gives it to the group's owner", cmd: assign(vip1, "d1", 4), want: map[string]string{vip1: "d1@4", vip2: "d1@6", gw: "d1@7"}},
		{desc: "assign with the wrong epoch", cmd: assign(vip1, "d2", 4), code: codes.FailedPrecondition, want: map[string]string{vip1: "d1@4", vip2: "d1@6", gw: "d1@7"}},
		{desc: "the group follows its member", cmd: assign(vip1, "d2", 5), want: map[string]string{vip1: "d2@5", vip2: "d1@6", gw: "d2@8"}},
		{desc: "group members cannot split", cmd: &raftlbv1.Command{Op: &raftlbv1.Command_AssignAddresses{AssignAddresses: &raftlbv1.AssignAddresses{
			Addresses: []*raftlbv1.Address{{Address: vip1, Owner: "d1", Epoch: 6}, {Address: gw, Owner: "d2", Epoch: 9}},
		}}}, code: codes.FailedPrecondition, want: map[string]string{vip1: "d2@5", vip2: "d1@6", gw: "d2@8"}},
		{desc: "DR VIPs move alone", cmd: assign(vip2, "d2", 7), want: map[string]string{vip1: "d2@5", vip2: "d2@7", gw: "d2@8"}},
		{desc: "removed owner leaves its addresses unowned", cmd: removeDirector("d2"), want: map[string]string{vip1: "@6", vip2: "@8", gw: "@9"}},
		{desc: "an announcement leaves them unowned", cmd: upsertDirector("d1", "192.0.2.1", false), want: map[string]string{vip1: "@6", vip2: "@8", gw: "@9"}},
		{desc: "the reassigner moves the group at once", cmd: assign(gw, "d1", 10), want: map[string]string{vip1: "d1@7", vip2: "@8", gw: "d1@10"}},
		{desc: "replacing the gateway keeps the group owner", cmd: setGateway("203.0.113.253", ""), want: map[string]string{vip1: "d1@7", vip2: "@8", "203.0.113.253": "d1@14"}},
		{desc: "VIP of a service deleted with it", cmd: deleteSvc(vip2, 80), want: map[string]string{vip1: "d1@7", "203.0.113.253": "d1@14"}},
		{desc: "set VIP preference without a service", cmd: &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: &raftlbv1.SetAddressRequest{
			Address: &raftlbv1.Address{Address: vip2, Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP},
		}}}, code: codes.NotFound, want: map[string]string{vip1: "d1@7", "203.0.113.253": "d1@14"}},
		{desc: "a director turned witness loses its addresses", cmd: upsertDirector("d1", "192.0.2.1", true), want: map[string]string{vip1: "@8", "203.0.113.253": "@15"}},
	}
	for _, s := range steps {
		res := f.apply(t, s.cmd)
		if codeOf(res) != s.code {
			t.Fatalf("%s: code %v (%s), want %v", s.desc, codeOf(res), res.GetMessage(), s.code)
		}
		if diff := cmp.Diff(s.want, owners(f.FSM)); diff != "" {
			t.Fatalf("%s: owners (-want +got):\n%s", s.desc, diff)
		}
	}

	// Recreating a VIP never reuses an epoch.
	g := newNode(t)
	g.mustApply(t, upsertDirector("d1", "192.0.2.1", false))
	g.mustApply(t, createSvc(vip1, 80, ""))
	g.mustApply(t, assign(vip1, "d1", 3))
	g.mustApply(t, deleteSvc(vip1, 80))
	g.mustApply(t, createSvc(vip1, 80, ""))
	if got := g.Addresses()[0].GetEpoch(); got <= 3 {
		t.Errorf("recreated VIP has epoch %d, want above 3", got)
	}
}

func TestSetAddress(t *testing.T) {
	f := newNode(t)
	f.mustApply(t, upsertDirector("d1", "192.0.2.1", false))
	f.mustApply(t, upsertDirector("d2", "192.0.2.2", false))
	f.mustApply(t, createSvc(vip1, 80, ""))
	res := f.mustApply(t, &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: &raftlbv1.SetAddressRequest{
		Address: &raftlbv1.Address{Address: vip1, Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP, PreferredOwner: "d2", Owner: "ignored", Epoch: 99},
	}}})
	want := &raftlbv1.Address{Address: vip1, Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP, PreferredOwner: "d2", Owner: "d1", Epoch: 3}
	if diff := cmp.Diff(want, res.GetAddress(), protocmp.Transform()); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	for desc, c := range map[string]*raftlbv1.Command{
		"gateway on a VIP": setGateway(vip1, ""),
		"unknown owner":    setGateway(gw, "d7"),
		"VIP kind on the gateway": func() *raftlbv1.Command {
			f.mustApply(t, setGateway(gw, ""))
			return &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: &raftlbv1.SetAddressRequest{
				Address: &raftlbv1.Address{Address: gw, Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP},
			}}}
		}(),
		"conflicting preference for a VIP": createSvc(vip1, 443, "d1"),
	} {
		if res := f.apply(t, c); codeOf(res) != codes.FailedPrecondition {
			t.Errorf("%s: %v, want FailedPrecondition", desc, res)
		}
	}
}
