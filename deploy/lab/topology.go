package lab

import (
	"fmt"
	"net/netip"
)

// Defaults for `raftlb lab`.
const (
	// DefaultPrefix prefixes every namespace of the interactive lab.
	DefaultPrefix = "rlb-"
	// DefaultDir is the interactive lab's state directory. It lives on /run, a tmpfs,
	// like /run/netns: after a reboot both the namespaces and their state are gone.
	DefaultDir = "/run/raftlb-lab"
)

// Interface and bridge names. Every host's front link is FrontIface on FrontBridge and
// its inside link InsideIface on InsideBridge, both in the switch namespace SwitchHost.
const (
	SwitchHost   = "sw"
	FrontBridge  = "br0"
	InsideBridge = "br1"
	FrontIface   = "eth0"
	InsideIface  = "eth1"
)

// Ports every director and the witness listen on (the project defaults).
const (
	APIPort     = 9443
	RaftPort    = 9444
	GossipPort  = 9445
	MetricsPort = 9446
)

// Ports the lab backend serves.
const (
	BackendHTTPPort = 80
	BackendEchoPort = 7
)

// Address ranges of the lab. Nothing outside them (and loopback) is ever configured.
var (
	// FrontNet is the front segment: clients, directors' eth0, DR/TUN realservers.
	FrontNet = netip.MustParsePrefix("192.0.2.0/24")
	// InsideNet is the inside segment: Raft, memberlist, NAT realservers.
	InsideNet = netip.MustParsePrefix("203.0.113.0/24")
	// VIPNet is where virtual service addresses come from; the client routes it on-link.
	VIPNet = netip.MustParsePrefix("198.51.100.0/24")
	// Gateway is the NAT realservers' return gateway, owned with the NAT VIPs.
	Gateway = netip.MustParseAddr("203.0.113.254")
)

// Role says what a lab host runs.
type Role string

// Roles of lab hosts.
const (
	RoleClient     Role = "client"
	RoleDirector   Role = "director"
	RoleWitness    Role = "witness"
	RoleRealserver Role = "realserver"
)

// Host is one namespace of the lab other than the switch.
type Host struct {
	// Name is the host's name without the prefix: "client", "d1", "rs2".
	Name string
	Role Role
	// Front is the address of FrontIface.
	Front netip.Addr
	// Inside is the address of InsideIface; the zero Addr when the host has no inside link.
	Inside netip.Addr
}

// HasInside reports whether the host is attached to the inside segment.
func (h Host) HasInside() bool { return h.Inside.IsValid() }

// Hosts returns the lab's hosts in a fixed order: client, directors, witness, realservers.
func Hosts() []Host {
	a := netip.MustParseAddr
	return []Host{
		{Name: "client", Role: RoleClient, Front: a("192.0.2.100")},
		{Name: "d1", Role: RoleDirector, Front: a("192.0.2.1"), Inside: a("203.0.113.1")},
		{Name: "d2", Role: RoleDirector, Front: a("192.0.2.2"), Inside: a("203.0.113.2")},
		{Name: "w1", Role: RoleWitness, Front: a("192.0.2.3"), Inside: a("203.0.113.3")},
		{Name: "rs1", Role: RoleRealserver, Front: a("192.0.2.11"), Inside: a("203.0.113.11")},
		{Name: "rs2", Role: RoleRealserver, Front: a("192.0.2.12"), Inside: a("203.0.113.12")},
		{Name: "rs3", Role: RoleRealserver, Front: a("192.0.2.13"), Inside: a("203.0.113.13")},
	}
}

// HostsWithRole returns the hosts that have one of the given roles, in Hosts order.
func HostsWithRole(roles ...Role) []Host {
	var out []Host
	for _, h := range Hosts() {
		for _, r := range roles {
			if h.Role == r {
				out = append(out, h)
				break
			}
		}
	}
	return out
}

// LookupHost returns the host called name.
func LookupHost(name string) (Host, error) {
	for _, h := range Hosts() {
		if h.Name == name {
			return h, nil
		}
	}
	return Host{}, fmt.Errorf("look up host %q: %w", name, ErrUnknownHost)
}

// namespaceHosts lists every namespace the lab creates, the switch included.
func namespaceHosts() []string {
	names := []string{SwitchHost}
	for _, h := range Hosts() {
		names = append(names, h.Name)
	}
	return names
}

// link is one veth pair: SwitchPort in the switch namespace, Iface in the host's.
type link struct {
	Host       string
	Iface      string
	SwitchPort string
	Bridge     string
	Addr       netip.Addr
	Bits       int
}

// Prefix is the interface's address with its segment's length.
func (lk link) Prefix() netip.Prefix { return netip.PrefixFrom(lk.Addr, lk.Bits) }

// links returns the lab's veth pairs. The switch end is "<host>-0" (front) or
// "<host>-1" (inside): at most 15 bytes, and unique because it lives in the lab's own
// switch namespace.
func links() []link {
	var out []link
	for _, h := range Hosts() {
		out = append(out, link{Host: h.Name, Iface: FrontIface, SwitchPort: h.Name + "-0",
			Bridge: FrontBridge, Addr: h.Front, Bits: FrontNet.Bits()})
		if h.HasInside() {
			out = append(out, link{Host: h.Name, Iface: InsideIface, SwitchPort: h.Name + "-1",
				Bridge: InsideBridge, Addr: h.Inside, Bits: InsideNet.Bits()})
		}
	}
	return out
}

// switchPort returns the switch-side port of host's iface.
func switchPort(host, iface string) (string, error) {
	for _, l := range links() {
		if l.Host == host && l.Iface == iface {
			return l.SwitchPort, nil
		}
	}
	return "", fmt.Errorf("find link %s/%s: %w", host, iface, ErrUnknownHost)
}

// MAC returns the lab's fixed MAC for an interface address: 02:00 (locally administered)
// followed by the IPv4 address, so a capture reads without a lookup table.
func MAC(addr netip.Addr) string {
	b := addr.As4()
	return fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}
