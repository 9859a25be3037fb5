package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// Method is the forwarding method a VIP is served with; it decides what the
// realserver needs.
type Method int

// Forwarding methods, as in raftlbv1.ForwardingMethod.
const (
	MethodUnspecified Method = iota
	MethodNAT
	MethodTUN
	MethodDR
)

// String returns the LVS name of the method.
func (m Method) String() string {
	switch m {
	case MethodNAT:
		return "nat"
	case MethodTUN:
		return "tun"
	case MethodDR:
		return "dr"
	default:
		return "unspecified"
	}
}

// needs ranks methods by what they need on the realserver: TUN needs all
// that DR does, DR all that NAT does.
func (m Method) needs() int {
	switch m {
	case MethodNAT:
		return 1
	case MethodDR:
		return 2
	case MethodTUN:
		return 3
	}
	return 0
}

// VIP is one virtual address the realserver must accept traffic for.
type VIP struct {
	Addr   netip.Addr `json:"addr"`
	Method Method     `json:"method"`
}

// Desired is the realserver's desired network configuration, the domain form
// of raftlbv1.WatchConfigResponse.
type Desired struct {
	Generation uint64 `json:"generation"`
	// VIPs for DR and TUN go on lo; NAT VIPs need nothing on the realserver.
	VIPs []VIP `json:"vips,omitempty"`
	// NATSources are the realserver's inside addresses whose replies must go
	// through NATGateway.
	NATSources []netip.Addr `json:"nat_sources,omitempty"`
	NATGateway netip.Addr   `json:"nat_gateway,omitzero"`
	// NATServices are the ports the NAT realservers answer on; only their
	// replies go through NATGateway. A source with none listed (a director
	// that predates them) has all its traffic sent through the gateway.
	NATServices []NATService `json:"nat_services,omitempty"`
	// TunnelSources are the outer source addresses (directors) accepted for
	// IP-in-IP, where the decapsulation can filter on them.
	TunnelSources []netip.Addr `json:"tunnel_sources,omitempty"`
}

// NATService is one port a NAT realserver answers on.
type NATService struct {
	Source netip.Addr `json:"source"`
	// Proto is the IP protocol number, ProtoTCP or ProtoUDP.
	Proto int    `json:"proto"`
	Port  uint16 `json:"port"`
}

// ErrInvalidConfig marks a desired configuration the agent refuses to apply.
var ErrInvalidConfig = errors.New("invalid desired config")

// DesiredFromProto converts and validates a WatchConfigResponse. An error names
// the offending field; nothing of an invalid generation is applied.
func DesiredFromProto(m *raftlbv1.WatchConfigResponse) (Desired, error) {
	d := Desired{Generation: m.GetGeneration()}
	var errs []error
	seen := map[netip.Addr]int{}
	for i, v := range m.GetVips() {
		a, err := parseV4(v.GetVip())
		if err != nil {
			errs = append(errs, fmt.Errorf("vips[%d].vip: %w", i, err))
			continue
		}
		var meth Method
		switch v.GetMethod() {
		case raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR:
			meth = MethodDR
		case raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN:
			meth = MethodTUN
		case raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT:
			meth = MethodNAT
		default:
			errs = append(errs, fmt.Errorf("vips[%d].method: %s is not a forwarding method", i, v.GetMethod()))
			continue
		}
		// A VIP served both ways needs the union; TUN's needs include DR's.
		if j, ok := seen[a]; ok {
			if meth.needs() > d.VIPs[j].Method.needs() {
				d.VIPs[j].Method = meth
			}
			continue
		}
		seen[a] = len(d.VIPs)
		d.VIPs = append(d.VIPs, VIP{Addr: a, Method: meth})
	}
	for i, s := range m.GetNatSources() {
		a, err := parseV4(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("nat_sources[%d]: %w", i, err))
			continue
		}
		if !slices.Contains(d.NATSources, a) {
			d.NATSources = append(d.NATSources, a)
		}
	}
	for i, n := range m.GetNatServices() {
		f := fmt.Sprintf("nat_services[%d]", i)
		ns, err := natServiceFromProto(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.%w", f, err))
			continue
		}
		if !slices.Contains(d.NATSources, ns.Source) {
			errs = append(errs, fmt.Errorf("%s.source: %s is not in nat_sources", f, ns.Source))
			continue
		}
		if !slices.Contains(d.NATServices, ns) {
			d.NATServices = append(d.NATServices, ns)
		}
	}
	if g := m.GetNatGateway(); g != "" {
		a, err := parseV4(g)
		if err != nil {
			errs = append(errs, fmt.Errorf("nat_gateway: %w", err))
		}
		d.NATGateway = a
	}
	if len(d.NATSources) > 0 && !d.NATGateway.IsValid() && len(errs) == 0 {
		errs = append(errs, errors.New("nat_gateway: required with nat_sources"))
	}
	for i, s := range m.GetTunnelSources() {
		a, err := parseV4(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("tunnel_sources[%d]: %w", i, err))
			continue
		}
		if !slices.Contains(d.TunnelSources, a) {
			d.TunnelSources = append(d.TunnelSources, a)
		}
	}
	if len(errs) > 0 {
		return Desired{}, fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return d, nil
}

func natServiceFromProto(n *raftlbv1.NatService) (NATService, error) {
	a, err := parseV4(n.GetSource())
	if err != nil {
		return NATService{}, fmt.Errorf("source: %w", err)
	}
	ns := NATService{Source: a}
	switch n.GetProtocol() {
	case raftlbv1.Protocol_PROTOCOL_TCP:
		ns.Proto = ProtoTCP
	case raftlbv1.Protocol_PROTOCOL_UDP:
		ns.Proto = ProtoUDP
	default:
		return NATService{}, fmt.Errorf("protocol: %s is not TCP or UDP", n.GetProtocol())
	}
	if p := n.GetPort(); p == 0 || p > 65535 {
		return NATService{}, fmt.Errorf("port: %d is out of range (1-65535)", p)
	}
	ns.Port = uint16(n.GetPort())
	return ns, nil
}

// parseV4 accepts the addresses the director's state machine accepts
// (server/fsm parseUnicast): an IPv4 address that is not unspecified,
// loopback, multicast, broadcast or link-local. A VIP of any of those would
// be put on lo, or a route pointed at it.
func parseV4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("parse address: %w", err)
	}
	var what string
	switch {
	case !a.Is4():
		what = "not an IPv4 address"
	case a.IsUnspecified():
		what = "the unspecified address"
	case a.IsLoopback():
		what = "a loopback address"
	case a.IsMulticast():
		what = "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		what = "the broadcast address"
	case a.IsLinkLocalUnicast():
		what = "a link-local address"
	default:
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%s is %s, not a unicast IPv4 address", a, what)
}

func (d Desired) equal(o Desired) bool {
	return d.Generation == o.Generation && slices.Equal(d.VIPs, o.VIPs) && slices.Equal(d.NATSources, o.NATSources) &&
		slices.Equal(d.NATServices, o.NATServices) && d.NATGateway == o.NATGateway && slices.Equal(d.TunnelSources, o.TunnelSources)
}

// hasMethod reports whether any VIP uses one of the methods.
func (d Desired) hasMethod(ms ...Method) bool {
	for _, v := range d.VIPs {
		if slices.Contains(ms, v.Method) {
			return true
		}
	}
	return false
}

// VIPStatus is what the agent achieved for one VIP.
type VIPStatus struct {
	VIP     netip.Addr
	Applied bool
	// Err says why it is not (fully) applied; empty when Applied.
	Err string
}

// Status is the outcome of one reconcile pass.
type Status struct {
	// Generation is the desired generation the pass applied.
	Generation uint64
	VIPs       []VIPStatus
	// DecapMode is DecapModeIPIP or DecapModeBPF while TUN VIPs are configured.
	DecapMode string
	// Err summarises every failure of the pass; nil when all is applied.
	Err error
}

func (s Status) toProto(id string) *raftlbv1.ReportStatusRequest {
	r := &raftlbv1.ReportStatusRequest{Id: id, AppliedGeneration: s.Generation, DecapMode: s.DecapMode}
	for _, v := range s.VIPs {
		r.Vips = append(r.Vips, &raftlbv1.VipResult{Vip: v.VIP.String(), Applied: v.Applied, Error: v.Err})
	}
	if s.Err != nil {
		r.Error = s.Err.Error()
	}
	return r
}
