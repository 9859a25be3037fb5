package fsm

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// An address the directors announce (a VIP or the NAT gateway) must not be
// one a host already uses as its own: the owner would answer ARP for it and
// take that host's traffic (a VIP equal to d1's front address hijacks d1's
// API and Raft). And a realserver must not be such an address or a director.

// directorUse says which director (or witness) uses a as its front address
// or as the host of its API, Raft or gossip address; "" if none. Hosts that
// are names rather than addresses are not resolved.
func (s *state) directorUse(a netip.Addr) string {
	for _, id := range sortedKeys(s.directors, cmp.Compare[string]) {
		d := s.directors[id]
		for _, f := range []struct{ name, v string }{
			{"front_address", d.GetFrontAddress()},
			{"api_address", hostOf(d.GetApiAddress())},
			{"raft_address", hostOf(d.GetRaftAddress())},
			{"gossip_address", hostOf(d.GetGossipAddress())},
		} {
			if h, err := netip.ParseAddr(f.v); err == nil && h.Unmap() == a {
				return fmt.Sprintf("director %q's %s", id, f.name)
			}
		}
	}
	return ""
}

func hostOf(hostport string) string {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return ""
	}
	return h
}

// realserverUse names the first service (in key order) with a realserver at a; "" if none.
func (s *state) realserverUse(a netip.Addr) string {
	for _, k := range sortedKeys(s.services, compareSvcKey) {
		for rk := range s.services[k].rs {
			if rk.addr == a {
				return fmt.Sprintf("a realserver of service %s", k)
			}
		}
	}
	return ""
}

// checkAnnounced refuses a new VIP or gateway address that a director or a
// realserver uses.
func (s *state) checkAnnounced(field string, a netip.Addr) error {
	if use := s.directorUse(a); use != "" {
		return precondition(field, "%s is %s; the address's owner would answer ARP for it", a, use)
	}
	if use := s.realserverUse(a); use != "" {
		return precondition(field, "%s is %s; the address's owner would answer ARP for it", a, use)
	}
	return nil
}

// checkRealserver refuses a realserver at an announced address or a director's.
func (s *state) checkRealserver(field string, a netip.Addr) error {
	if cur, ok := s.addresses[a]; ok {
		what := "a VIP"
		if cur.GetKind() == raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY {
			what = "the NAT gateway address"
		}
		return precondition(field, "%s is %s, which the directors answer for", a, what)
	}
	if use := s.directorUse(a); use != "" {
		return precondition(field, "%s is %s", a, use)
	}
	return nil
}
