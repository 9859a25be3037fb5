package main

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// TestPrintAddresses: a lease the answering director does not know (it is
// neither the owner nor the leader) shows as unknown, not as expired.
func TestPrintAddresses(t *testing.T) {
	t.Parallel()
	as := []*raftlbv1.Address{
		{Address: "198.51.100.10", Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP, Owner: "d1", Epoch: 3, LeaseRemainingMs: 420},
		{Address: "198.51.100.20", Kind: raftlbv1.AddressKind_ADDRESS_KIND_VIP, PreferredOwner: "d2", Owner: "d2", Epoch: 5},
		{Address: "203.0.113.254", Kind: raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY},
	}
	var buf bytes.Buffer
	if err := printAddresses(&buf, as); err != nil {
		t.Fatal(err)
	}
	want := `ADDRESS        KIND         PREFERRED  OWNER  EPOCH  LEASE LEFT
198.51.100.10  vip          -          d1     3      420ms
198.51.100.20  vip          d2         d2     5      -
203.0.113.254  nat-gateway  -          -      0      -
`
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("address table (-want +got):\n%s", diff)
	}
}
