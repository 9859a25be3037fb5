package agent

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors of the Kernel interface.
var (
	// ErrNotSupported is returned when the kernel lacks a feature, such as the
	// ipip module.
	ErrNotSupported = errors.New("not supported by this kernel")
	// ErrNotFound is returned for a link or sysctl that does not exist.
	ErrNotFound = errors.New("not found")
)

// MainTable is the kernel's main routing table.
const MainTable = 254

// Link is a network interface as the agent sees it.
type Link struct {
	Name  string
	Index int
	MTU   int
	Up    bool
	MAC   string
	Addrs []netip.Prefix
}

// Route is an IPv4 unicast route. A zero LinkIndex in a route to add lets the
// kernel pick the device from the gateway.
type Route struct {
	Table     int          `json:"table"`
	Dst       netip.Prefix `json:"dst"`
	Gw        netip.Addr   `json:"gw,omitzero"`
	LinkIndex int          `json:"link_index,omitempty"`
	// AdvMSS is the MSS TCP advertises on connections using the route; zero
	// leaves the kernel's choice (MTU - 40).
	AdvMSS int `json:"adv_mss,omitempty"`
}

func (r Route) String() string {
	s := fmt.Sprintf("%s table %d", r.Dst, r.Table)
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	if r.LinkIndex != 0 {
		s += fmt.Sprintf(" ifindex %d", r.LinkIndex)
	}
	if r.AdvMSS != 0 {
		s += fmt.Sprintf(" advmss %d", r.AdvMSS)
	}
	return s
}

// key identifies a route within the tables the agent owns: it installs one
// route per destination and table.
func (r Route) key() string { return fmt.Sprintf("%d/%s", r.Table, r.Dst) }

// Rule is an IPv4 policy routing rule "from Src [ipproto Proto sport Sport]
// lookup Table" at Priority. Proto and Sport narrow it to the replies of one
// service; zero means any.
type Rule struct {
	Priority int          `json:"priority"`
	Src      netip.Prefix `json:"src"`
	Proto    int          `json:"proto,omitempty"`
	Sport    uint16       `json:"sport,omitempty"`
	Table    int          `json:"table"`
}

func (r Rule) String() string {
	s := fmt.Sprintf("%d: from %s", r.Priority, r.Src)
	if r.Proto != 0 {
		s += " ipproto " + protoName(r.Proto)
	}
	if r.Sport != 0 {
		s += fmt.Sprintf(" sport %d", r.Sport)
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}

// IP protocol numbers of the services a NAT realserver answers.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

func protoName(p int) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return fmt.Sprint(p)
}

// Kernel is every privileged operation the agent performs. The reconciler
// only talks to the kernel through it, so its logic is tested with a fake.
// Adds fail if the object exists; deletes of an absent object are not errors.
type Kernel interface {
	// Links lists every interface with its IPv4 addresses.
	Links() ([]Link, error)
	// LinkByName returns one interface, or an error wrapping ErrNotFound.
	LinkByName(name string) (Link, error)
	AddAddr(link string, p netip.Prefix) error
	DelAddr(link string, p netip.Prefix) error

	// Routes lists the IPv4 unicast routes of a table.
	Routes(table int) ([]Route, error)
	// ReplaceRoute installs r, replacing the route to the same destination.
	ReplaceRoute(r Route) error
	DelRoute(r Route) error

	// Rules lists the IPv4 rules a Rule can express: a source selector,
	// optionally with a protocol and a single source port, and nothing else.
	Rules() ([]Rule, error)
	AddRule(r Rule) error
	DelRule(r Rule) error

	// Sysctl reads a /proc/sys value such as "net/ipv4/conf/all/arp_ignore".
	// A missing entry yields an error wrapping ErrNotFound.
	Sysctl(name string) (string, error)
	SetSysctl(name, value string) error

	// AddIPIPTunnel creates an IP-in-IP device that receives tunnelled packets
	// from any source, and sets it up. It returns an error wrapping
	// ErrNotSupported when the kernel has no ipip.
	AddIPIPTunnel(name string) error
	SetLinkUp(name string) error
	DelLink(name string) error
}
