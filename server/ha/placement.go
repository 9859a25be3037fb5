package ha

import (
	"cmp"
	"net/netip"
	"slices"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// Assignment is one planned change of owner: the address goes to Owner at
// Epoch, which is the address's current epoch plus one.
type Assignment struct {
	Address string
	Owner   string
	Epoch   uint64
}

// Plan decides which addresses get a new owner. It is pure and deterministic:
// the same inputs give the same output, sorted by address.
//
// Only addresses whose owner is unset, is not a full director (removed, or a
// witness) or is not alive are reassigned; an address with a live owner stays
// where it is even when its preferred owner is alive again (no automatic
// failback: moving a working address is a handover, done on request).
// A reassigned address goes to its preferred owner when that one is alive and
// may own addresses, else to the alive full director with the fewest
// addresses (ties broken by id). The NAT gateway and every VIP that isNAT
// reports form one group with one owner: members that need an owner join the
// group's live owner, and a group without one moves as a whole.
//
// alive says whether a director may own addresses now; witnesses never do,
// whatever it says. isNAT may be nil (no NAT VIPs).
func Plan(directors []*raftlbv1.Director, addresses []*raftlbv1.Address, isNAT func(addr string) bool, alive func(id string) bool) []Assignment {
	eligible := make(map[string]bool, len(directors))
	var ids []string
	for _, d := range directors {
		if d.GetWitness() || d.GetId() == "" || !alive(d.GetId()) {
			continue
		}
		if !eligible[d.GetId()] {
			eligible[d.GetId()] = true
			ids = append(ids, d.GetId())
		}
	}
	slices.Sort(ids)
	ok := func(a *raftlbv1.Address) bool { return eligible[a.GetOwner()] }

	load := make(map[string]int, len(ids))
	var group, rest []*raftlbv1.Address
	for _, a := range sortedAddresses(addresses) {
		if ok(a) {
			load[a.GetOwner()]++
		}
		switch {
		case a.GetKind() == raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY:
			group = append([]*raftlbv1.Address{a}, group...)
		case isNAT != nil && isNAT(a.GetAddress()):
			group = append(group, a)
		default:
			rest = append(rest, a)
		}
	}
	leastLoaded := func() string {
		best := ""
		for _, id := range ids {
			if best == "" || load[id] < load[best] {
				best = id
			}
		}
		return best
	}

	var out []Assignment
	assign := func(a *raftlbv1.Address, owner string) {
		out = append(out, Assignment{Address: a.GetAddress(), Owner: owner, Epoch: a.GetEpoch() + 1})
		load[owner]++
	}

	// The NAT group first: it is the largest unit to place.
	if len(group) > 0 {
		owner := ""
		for _, a := range group {
			if ok(a) {
				owner = a.GetOwner()
				break
			}
		}
		if owner == "" {
			for _, a := range group {
				if eligible[a.GetPreferredOwner()] {
					owner = a.GetPreferredOwner()
					break
				}
			}
		}
		if owner == "" {
			owner = leastLoaded()
		}
		if owner != "" {
			for _, a := range group {
				if !ok(a) {
					assign(a, owner)
				}
			}
		}
	}
	for _, a := range rest {
		if ok(a) {
			continue
		}
		owner := a.GetPreferredOwner()
		if !eligible[owner] {
			owner = leastLoaded()
		}
		if owner == "" {
			continue
		}
		assign(a, owner)
	}
	slices.SortFunc(out, func(x, y Assignment) int { return compareAddrStrings(x.Address, y.Address) })
	return out
}

// NATVIPs returns the VIPs of services with at least one NAT realserver:
// the VIPs that belong to the NAT ownership group.
func NATVIPs(services []*raftlbv1.VirtualService) map[string]bool {
	out := make(map[string]bool)
	for _, s := range services {
		for _, rs := range s.GetRealservers() {
			if rs.GetMethod() == raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT {
				if a, err := netip.ParseAddr(s.GetKey().GetVip()); err == nil {
					out[a.String()] = true
				}
				break
			}
		}
	}
	return out
}

func sortedAddresses(in []*raftlbv1.Address) []*raftlbv1.Address {
	out := slices.Clone(in)
	slices.SortFunc(out, func(x, y *raftlbv1.Address) int { return compareAddrStrings(x.GetAddress(), y.GetAddress()) })
	return out
}

// compareAddrStrings orders by parsed address, falling back to the string.
func compareAddrStrings(x, y string) int {
	a, errA := netip.ParseAddr(x)
	b, errB := netip.ParseAddr(y)
	if errA == nil && errB == nil {
		return a.Compare(b)
	}
	return cmp.Compare(x, y)
}
