package fsm

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func encodeSnapshot(t *testing.T, s *raftlbv1.Snapshot) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := protodelim.MarshalTo(&b, s); err != nil {
		t.Fatalf("encode snapshot: %v", err)
	}
	return b.Bytes()
}

// TestRestoreRefusesBrokenAddresses: a snapshot whose addresses break what
// Apply keeps (one NAT gateway, a known kind, an owner that is a full
// director) is refused, naming the entry, and the previous state stays.
func TestRestoreRefusesBrokenAddresses(t *testing.T) {
	directors := []*raftlbv1.Director{
		{Id: "d1", FrontAddress: "192.0.2.1"},
		{Id: "w1", FrontAddress: "192.0.2.3", Witness: true},
	}
	services := []*raftlbv1.VirtualService{withServiceDefaults(&raftlbv1.VirtualService{Key: key(vip1, 80)})}
	addr := func(a string, k raftlbv1.AddressKind, owner string) *raftlbv1.Address {
		return &raftlbv1.Address{Address: a, Kind: k, Owner: owner, Epoch: 1}
	}
	vipKind, gwKind := raftlbv1.AddressKind_ADDRESS_KIND_VIP, raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY
	for _, tc := range []struct {
		desc  string
		addrs []*raftlbv1.Address
		want  string // empty: restored
	}{
		{"valid", []*raftlbv1.Address{addr(vip1, vipKind, "d1"), addr(vip2, vipKind, ""), addr(gw, gwKind, "")}, ""},
		{"two gateways", []*raftlbv1.Address{addr(gw, gwKind, "d1"), addr("203.0.113.253", gwKind, "d1")}, "addresses[1]: kind: 203.0.113.253 is a second NAT gateway besides 203.0.113.254"},
		{"no kind", []*raftlbv1.Address{addr(vip1, raftlbv1.AddressKind_ADDRESS_KIND_UNSPECIFIED, "d1")}, "addresses[0]: kind: ADDRESS_KIND_UNSPECIFIED is not VIP or NAT_GATEWAY"},
		{"unknown kind", []*raftlbv1.Address{addr(vip1, 9, "d1")}, "addresses[0]: kind: 9 is not VIP or NAT_GATEWAY"},
		{"unknown owner", []*raftlbv1.Address{addr(vip1, vipKind, "d7")}, `addresses[0]: owner: "d7" is not a director`},
		{"witness owner", []*raftlbv1.Address{addr(vip1, vipKind, "w1")}, `addresses[0]: owner: "w1" is not a director`},
		{"bad preferred owner", []*raftlbv1.Address{{Address: vip1, Kind: vipKind, PreferredOwner: "d 1"}}, "addresses[0]: preferred_owner: "},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			f := newNode(t)
			f.mustApply(t, upsertDirector("d9", "192.0.2.9", false))
			before := readAll(f.FSM)
			data := encodeSnapshot(t, &raftlbv1.Snapshot{Generation: 5, Services: services, Directors: directors, Addresses: tc.addrs})
			err := f.Restore(nopCloser(data))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Restore: %v", err)
				}
				if diff := cmp.Diff(tc.addrs, f.Addresses(), protocmp.Transform()); diff != "" {
					t.Errorf("restored addresses (-want +got):\n%s", diff)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Restore = %v, want an error containing %q", err, tc.want)
			}
			if diff := cmp.Diff(before, readAll(f.FSM), protocmp.Transform()); diff != "" {
				t.Errorf("state after a refused restore (-want +got):\n%s", diff)
			}
		})
	}
}
