package ha

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func dirs(ids ...string) []*raftlbv1.Director {
	var out []*raftlbv1.Director
	for _, id := range ids {
		out = append(out, &raftlbv1.Director{Id: id, Witness: id[0] == 'w'})
	}
	return out
}

func vip(addr, pref, owner string, epoch uint64) *raftlbv1.Address {
	return &raftlbv1.Address{Address: addr, Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP, PreferredOwner: pref, Owner: owner, Epoch: epoch}
}

func gw(addr, pref, owner string, epoch uint64) *raftlbv1.Address {
	a := vip(addr, pref, owner, epoch)
	a.Kind = raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY
	return a
}

// applyPlan is what the state machine does with a plan.
func applyPlan(addrs []*raftlbv1.Address, plan []Assignment) {
	for _, p := range plan {
		for _, a := range addrs {
			if a.Address == p.Address {
				a.Owner, a.Epoch = p.Owner, p.Epoch
			}
		}
	}
}

func TestPlan(t *testing.T) {
	type step struct {
		name  string
		alive []string
		want  []Assignment
	}
	tests := []struct {
		name  string
		dirs  []*raftlbv1.Director
		addrs []*raftlbv1.Address
		nat   []string
		steps []step
	}{
		{
			name:  "assign, idempotent, owner lost moves, preferred returns stays",
			dirs:  dirs("d1", "d2", "w1"),
			addrs: []*raftlbv1.Address{vip("198.51.100.10", "d1", "", 1)},
			steps: []step{
				{"assign to preferred", []string{"d1", "d2", "w1"}, []Assignment{{"198.51.100.10", "d1", 2}}},
				{"idempotent", []string{"d1", "d2", "w1"}, nil},
				{"owner lost moves", []string{"d2", "w1"}, []Assignment{{"198.51.100.10", "d2", 3}}},
				{"preferred returns stays", []string{"d1", "d2", "w1"}, nil},
			},
		},
		{
			name:  "witness never",
			dirs:  dirs("d1", "w1"),
			addrs: []*raftlbv1.Address{vip("198.51.100.10", "w1", "", 1), vip("198.51.100.11", "", "w1", 4)},
			steps: []step{
				{"only the witness alive", []string{"w1"}, nil},
				{"a director appears", []string{"d1", "w1"}, []Assignment{{"198.51.100.10", "d1", 2}, {"198.51.100.11", "d1", 5}}},
			},
		},
		{
			name: "NAT group moves together",
			dirs: dirs("d1", "d2", "d3"),
			addrs: []*raftlbv1.Address{
				gw("203.0.113.254", "", "d1", 3), vip("198.51.100.10", "", "d1", 5),
				vip("198.51.100.11", "", "d1", 2), vip("198.51.100.12", "", "d2", 7),
			},
			nat: []string{"198.51.100.10", "198.51.100.11"},
			steps: []step{
				{"all live", []string{"d1", "d2", "d3"}, nil},
				{"group owner lost", []string{"d2", "d3"}, []Assignment{
					{"198.51.100.10", "d3", 6}, {"198.51.100.11", "d3", 3}, {"203.0.113.254", "d3", 4},
				}},
			},
		},
		{
			name: "NAT member without owner joins the group",
			dirs: dirs("d1", "d2"),
			addrs: []*raftlbv1.Address{
				gw("203.0.113.254", "", "d2", 3), vip("198.51.100.10", "d1", "", 1),
			},
			nat: []string{"198.51.100.10"},
			steps: []step{
				{"joins d2 despite preference", []string{"d1", "d2"}, []Assignment{{"198.51.100.10", "d2", 2}}},
			},
		},
		{
			name: "spread",
			dirs: dirs("d1", "d2", "w1"),
			addrs: []*raftlbv1.Address{
				vip("198.51.100.10", "", "", 1), vip("198.51.100.11", "", "", 1),
				vip("198.51.100.12", "", "", 1), vip("198.51.100.13", "", "", 1),
			},
			steps: []step{
				{"even", []string{"d1", "d2", "w1"}, []Assignment{
					{"198.51.100.10", "d1", 2}, {"198.51.100.11", "d2", 2},
					{"198.51.100.12", "d1", 2}, {"198.51.100.13", "d2", 2},
				}},
				{"d1 lost: all on d2", []string{"d2", "w1"}, []Assignment{
					{"198.51.100.10", "d2", 3}, {"198.51.100.12", "d2", 3},
				}},
				{"no failback", []string{"d1", "d2", "w1"}, nil},
			},
		},
		{
			name:  "nobody alive",
			dirs:  dirs("d1"),
			addrs: []*raftlbv1.Address{vip("198.51.100.10", "", "d1", 2)},
			steps: []step{{"stays put", nil, nil}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nat := make(map[string]bool)
			for _, a := range tt.nat {
				nat[a] = true
			}
			for _, s := range tt.steps {
				alive := make(map[string]bool)
				for _, id := range s.alive {
					alive[id] = true
				}
				got := Plan(tt.dirs, tt.addrs, func(a string) bool { return nat[a] }, func(id string) bool { return alive[id] })
				if diff := cmp.Diff(s.want, got); diff != "" {
					t.Fatalf("step %q: plan mismatch (-want +got):\n%s", s.name, diff)
				}
				again := Plan(tt.dirs, tt.addrs, func(a string) bool { return nat[a] }, func(id string) bool { return alive[id] })
				if diff := cmp.Diff(got, again); diff != "" {
					t.Fatalf("step %q: not deterministic (-first +second):\n%s", s.name, diff)
				}
				applyPlan(tt.addrs, got)
			}
		})
	}
}

func TestNATVIPs(t *testing.T) {
	svcs := []*raftlbv1.VirtualService{
		{Key: &raftlbv1.ServiceKey{Vip: "198.51.100.10"}, Realservers: []*raftlbv1.Realserver{
			{Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR}, {Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT}}},
		{Key: &raftlbv1.ServiceKey{Vip: "198.51.100.11"}, Realservers: []*raftlbv1.Realserver{
			{Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN}}},
	}
	if diff := cmp.Diff(map[string]bool{"198.51.100.10": true}, NATVIPs(svcs)); diff != "" {
		t.Errorf("NATVIPs mismatch (-want +got):\n%s", diff)
	}
}
