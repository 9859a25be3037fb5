package fsm

import (
	"cmp"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// state is the whole replicated state. The FSM owns one behind its lock;
// nothing in it is shared with callers (inputs are cloned on the way in,
// outputs on the way out).
type state struct {
	// generation counts changes to the desired configuration: everything but
	// agent status reports and the connection table, which change all the time
	// and would otherwise wake every watcher (and agents would chase their own
	// reports).
	generation uint64
	services   map[svcKey]*service
	addresses  map[netip.Addr]*raftlbv1.Address
	directors  map[string]*raftlbv1.Director
	agents     map[string]*raftlbv1.AgentInfo
	conns      map[connKey]connVal
	// dropped counts new connection entries refused because the table was full.
	dropped uint64
}

type svcKey struct {
	vip   netip.Addr
	port  uint16
	proto raftlbv1.Protocol
}

type rsKey struct {
	addr netip.Addr
	port uint16
}

type service struct {
	// def is the service as stored: defaults filled, realservers and stats nil.
	def *raftlbv1.VirtualService
	rs  map[rsKey]*raftlbv1.Realserver
}

func newState() *state {
	return &state{
		services:  make(map[svcKey]*service),
		addresses: make(map[netip.Addr]*raftlbv1.Address),
		directors: make(map[string]*raftlbv1.Director),
		agents:    make(map[string]*raftlbv1.AgentInfo),
		conns:     make(map[connKey]connVal),
	}
}

// keyOf converts a validated ServiceKey.
func keyOf(k *raftlbv1.ServiceKey) (svcKey, bool) {
	a, reason := parseUnicast(k.GetVip())
	if reason != "" || k.GetPort() == 0 || k.GetPort() > 65535 {
		return svcKey{}, false
	}
	return svcKey{vip: a, port: uint16(k.GetPort()), proto: k.GetProtocol()}, true
}

func (k svcKey) String() string {
	name := "TCP"
	if k.proto == raftlbv1.Protocol_PROTOCOL_UDP {
		name = "UDP"
	}
	return netip.AddrPortFrom(k.vip, k.port).String() + "/" + name
}

func compareSvcKey(a, b svcKey) int {
	if c := a.vip.Compare(b.vip); c != 0 {
		return c
	}
	if c := cmp.Compare(a.port, b.port); c != 0 {
		return c
	}
	return cmp.Compare(a.proto, b.proto)
}

func compareRsKey(a, b rsKey) int {
	if c := a.addr.Compare(b.addr); c != 0 {
		return c
	}
	return cmp.Compare(a.port, b.port)
}

func sortedKeys[K comparable, V any](m map[K]V, cmpf func(a, b K) int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmpf)
	return keys
}

// view returns a deep copy of the service with its realservers, sorted.
func (sv *service) view() *raftlbv1.VirtualService {
	out := proto.CloneOf(sv.def)
	for _, k := range sortedKeys(sv.rs, compareRsKey) {
		out.Realservers = append(out.Realservers, proto.CloneOf(sv.rs[k]))
	}
	return out
}

// vipInUse reports whether any service uses the VIP.
func (s *state) vipInUse(vip netip.Addr) bool {
	for k := range s.services {
		if k.vip == vip {
			return true
		}
	}
	return false
}

// --- ownership ---
//
// The state machine gives an address an owner only when the address is
// created: its preferred owner if that is a full director, else the full
// director with the lowest id (the NAT gateway: the NAT group's owner). From
// then on owners change only through AssignAddresses, which the leader's
// reassigner proposes once the old owner's lease has surely run out (or the
// old owner released it). What the state machine may do by itself is take an
// owner away, never give one: a removed director, a director turned witness,
// and a VIP that joins the NAT group under another owner than the group's
// lose their owner. The NAT gateway and every VIP with a NAT realserver form
// one group with one owner, because NAT realservers have a single return
// route. Every change of owner bumps the address's epoch.

func (s *state) fullDirector(id string) bool {
	d, ok := s.directors[id]
	return ok && !d.GetWitness()
}

func (s *state) pickOwner(preferred string) string {
	if s.fullDirector(preferred) {
		return preferred
	}
	for _, id := range sortedKeys(s.directors, cmp.Compare[string]) {
		if !s.directors[id].GetWitness() {
			return id
		}
	}
	return ""
}

func setOwner(a *raftlbv1.Address, owner string) bool {
	if a.Owner == owner {
		return false
	}
	a.Owner = owner
	a.Epoch++
	return true
}

func (s *state) gateway() *raftlbv1.Address {
	for _, a := range s.addresses {
		if a.GetKind() == raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY {
			return a
		}
	}
	return nil
}

// natVIPs returns the VIPs with at least one NAT realserver.
func (s *state) natVIPs() map[netip.Addr]bool {
	out := make(map[netip.Addr]bool)
	for k, sv := range s.services {
		for _, rs := range sv.rs {
			if rs.GetMethod() == raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT {
				out[k.vip] = true
				break
			}
		}
	}
	return out
}

// natGroup returns the NAT group in a fixed order: the gateway first, then
// the NAT VIPs by address.
func (s *state) natGroup() []*raftlbv1.Address {
	var group []*raftlbv1.Address
	if gw := s.gateway(); gw != nil {
		group = append(group, gw)
	}
	for _, vip := range sortedKeys(s.natVIPs(), netip.Addr.Compare) {
		if a, ok := s.addresses[vip]; ok {
			group = append(group, a)
		}
	}
	return group
}

// groupOwner is the owner of the first owned member of the NAT group.
func groupOwner(group []*raftlbv1.Address) string {
	for _, a := range group {
		if a.GetOwner() != "" {
			return a.GetOwner()
		}
	}
	return ""
}

// alignNATGroup keeps the NAT group under one owner: a member that another
// director owns (a VIP that just gained a NAT realserver) loses its owner.
// Its epoch moves, so its old owner's lease is refused from now on, and the
// reassigner gives it to the group's owner once that lease has surely run
// out; moving it here at once could let two directors answer for it.
func (s *state) alignNATGroup() bool {
	group := s.natGroup()
	owner := groupOwner(group)
	if owner == "" {
		return false
	}
	changed := false
	for _, a := range group {
		if a.GetOwner() != "" && a.GetOwner() != owner {
			changed = setOwner(a, "") || changed
		}
	}
	return changed
}

// disownNonDirectors takes every address away from an owner that is no
// longer a full director (removed, or turned witness).
func (s *state) disownNonDirectors() bool {
	changed := false
	for _, addr := range sortedKeys(s.addresses, netip.Addr.Compare) {
		a := s.addresses[addr]
		if a.GetOwner() != "" && !s.fullDirector(a.GetOwner()) {
			changed = setOwner(a, "") || changed
		}
	}
	return changed
}
