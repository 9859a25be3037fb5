package ha

import (
	"cmp"
	"net/netip"
	"slices"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// Claim is an address a director believes it owns, at an epoch.
type Claim struct {
	Address netip.Addr
	Epoch   uint64
}

func compareClaims(a, b Claim) int {
	return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Epoch, b.Epoch))
}

func sortClaims(cs []Claim) []Claim {
	slices.SortFunc(cs, compareClaims)
	return cs
}

// ClaimsFromProto converts wire claims; claims whose address does not parse
// are left out (they can match no assignment).
func ClaimsFromProto(in []*raftlbv1.LeaseClaim) []Claim {
	out := make([]Claim, 0, len(in))
	for _, c := range in {
		a, err := netip.ParseAddr(c.GetAddress())
		if err != nil {
			continue
		}
		out = append(out, Claim{Address: a, Epoch: c.GetEpoch()})
	}
	return out
}

// ClaimsToProto converts claims to their wire form.
func ClaimsToProto(in []Claim) []*raftlbv1.LeaseClaim {
	out := make([]*raftlbv1.LeaseClaim, len(in))
	for i, c := range in {
		out[i] = &raftlbv1.LeaseClaim{Address: c.Address.String(), Epoch: c.Epoch}
	}
	return out
}
