package fsm

import (
	"cmp"
	"net/netip"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// AgentConfig derives an agent's desired configuration from the realservers
// whose address is one of the agent's registered interface addresses:
//   - a DR or TUN realserver puts its VIP (with the method) in vips;
//   - a NAT realserver puts its address in nat_sources and its address,
//     protocol and port in nat_services, and nat_gateway is the gateway
//     address if one is declared;
//   - with any TUN VIP, tunnel_sources lists the full directors' front addresses.
//
// Drained and zero-weight realservers count: their existing connections
// still arrive. It returns ErrNotFound for an agent that has not registered.
func (f *FSM) AgentConfig(id string) (*raftlbv1.WatchConfigResponse, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ag, ok := f.s.agents[id]
	if !ok {
		return nil, notFound("id", "agent %q is not registered", id)
	}
	mine := make(map[netip.Addr]bool)
	for _, ifc := range ag.GetInterfaces() {
		for _, s := range ifc.GetAddresses() {
			if a, ok := parseIfaceAddr(s); ok {
				mine[a.Unmap()] = true
			}
		}
	}
	type vipMethod struct {
		vip    netip.Addr
		method raftlbv1.ForwardingMethod
	}
	vips := make(map[vipMethod]bool)
	type natService struct {
		src   netip.Addr
		proto raftlbv1.Protocol
		port  uint16
	}
	nat := make(map[netip.Addr]bool)
	natSvcs := make(map[natService]bool)
	tun := false
	for k, sv := range f.s.services {
		for rk, rs := range sv.rs {
			if !mine[rk.addr] {
				continue
			}
			switch m := rs.GetMethod(); m {
			case raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT:
				nat[rk.addr] = true
				natSvcs[natService{rk.addr, k.proto, rk.port}] = true
			default:
				vips[vipMethod{k.vip, m}] = true
				tun = tun || m == raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN
			}
		}
	}
	out := &raftlbv1.WatchConfigResponse{Generation: f.s.generation}
	for _, v := range sortedKeys(vips, func(a, b vipMethod) int {
		return cmp.Or(a.vip.Compare(b.vip), cmp.Compare(a.method, b.method))
	}) {
		out.Vips = append(out.Vips, &raftlbv1.AgentVip{Vip: v.vip.String(), Method: v.method})
	}
	for _, a := range sortedKeys(nat, netip.Addr.Compare) {
		out.NatSources = append(out.NatSources, a.String())
	}
	for _, n := range sortedKeys(natSvcs, func(a, b natService) int {
		return cmp.Or(a.src.Compare(b.src), cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
	}) {
		out.NatServices = append(out.NatServices, &raftlbv1.NatService{Source: n.src.String(), Protocol: n.proto, Port: uint32(n.port)})
	}
	if gw := f.s.gateway(); gw != nil && len(nat) > 0 {
		out.NatGateway = gw.GetAddress()
	}
	if tun {
		srcs := make(map[netip.Addr]bool)
		for _, d := range f.s.directors {
			if a, reason := parseUnicast(d.GetFrontAddress()); reason == "" && !d.GetWitness() {
				srcs[a] = true
			}
		}
		for _, a := range sortedKeys(srcs, netip.Addr.Compare) {
			out.TunnelSources = append(out.TunnelSources, a.String())
		}
	}
	return out, nil
}
