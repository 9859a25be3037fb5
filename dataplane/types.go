package dataplane

import (
	"fmt"
	"net/netip"
	"time"
)

// Proto is an IP protocol number of a service.
type Proto uint8

// Protocols a service can balance.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Method is how a packet reaches a realserver.
type Method uint8

// Forwarding methods, as in LVS.
const (
	// DR rewrites the destination MAC; the realserver holds the VIP on lo.
	DR Method = iota
	// TUN wraps the packet in IPv4 (protocol 4) addressed to the realserver.
	TUN
	// NAT rewrites VIP:port to the realserver's address:port; replies come
	// back through the gateway address and are rewritten in reverse.
	NAT
)

func (m Method) String() string {
	switch m {
	case DR:
		return "dr"
	case TUN:
		return "tun"
	case NAT:
		return "nat"
	}
	return fmt.Sprintf("method(%d)", uint8(m))
}

// Scheduler picks the realserver of a new connection.
type Scheduler uint8

// Schedulers, named as in ipvsadm.
const (
	// MH is weighted Maglev hashing of client address and port; every
	// director makes the same choice without sharing state.
	MH Scheduler = iota
	// SH hashes the client address only (over a Maglev table).
	SH
	// RR is round robin, ignoring weights other than 0.
	RR
	// WRR is weighted round robin (a smooth interleaved sequence).
	WRR
	// LC picks the realserver with the fewest connections in the table.
	LC
	// WLC picks the fewest connections per unit of weight.
	WLC
)

var schedNames = [...]string{MH: "mh", SH: "sh", RR: "rr", WRR: "wrr", LC: "lc", WLC: "wlc"}

func (s Scheduler) String() string {
	if int(s) < len(schedNames) {
		return schedNames[s]
	}
	return fmt.Sprintf("scheduler(%d)", uint8(s))
}

// ParseScheduler parses an ipvsadm scheduler name.
func ParseScheduler(name string) (Scheduler, error) {
	for i, n := range schedNames {
		if n == name {
			return Scheduler(i), nil
		}
	}
	return 0, fmt.Errorf("parse scheduler %q: %w", name, ErrInvalid)
}

// Timeouts are a service's idle timeouts per connection state. Zero
// fields take the IPVS defaults.
type Timeouts struct {
	TCPSynRecv     time.Duration // default 60 s
	TCPEstablished time.Duration // default 900 s
	TCPFinWait     time.Duration // default 120 s
	TCPClose       time.Duration // after an RST; default 10 s
	UDP            time.Duration // default 300 s
}

// DefaultTimeouts are the IPVS defaults.
var DefaultTimeouts = Timeouts{
	TCPSynRecv:     60 * time.Second,
	TCPEstablished: 900 * time.Second,
	TCPFinWait:     120 * time.Second,
	TCPClose:       10 * time.Second,
	UDP:            300 * time.Second,
}

func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts
	if t.TCPSynRecv > 0 {
		d.TCPSynRecv = t.TCPSynRecv
	}
	if t.TCPEstablished > 0 {
		d.TCPEstablished = t.TCPEstablished
	}
	if t.TCPFinWait > 0 {
		d.TCPFinWait = t.TCPFinWait
	}
	if t.TCPClose > 0 {
		d.TCPClose = t.TCPClose
	}
	if t.UDP > 0 {
		d.UDP = t.UDP
	}
	return d
}

func (t Timeouts) forState(s ConnState) time.Duration {
	switch s {
	case StateSynRecv:
		return t.TCPSynRecv
	case StateEstablished:
		return t.TCPEstablished
	case StateFinWait:
		return t.TCPFinWait
	case StateClose:
		return t.TCPClose
	case StateUDP:
		return t.UDP
	}
	return t.TCPClose
}

// ServiceKey identifies a virtual service.
type ServiceKey struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

func (k ServiceKey) String() string {
	return fmt.Sprintf("%s/%s", k.Proto, netip.AddrPortFrom(k.VIP, k.Port))
}

// Realserver is one backend of a service.
type Realserver struct {
	// Addr is the front address for DR and TUN, the inside address for NAT.
	Addr netip.Addr
	// Port is the realserver's port; DR and TUN cannot translate ports, so
	// for them it must equal the service port.
	Port   uint16
	Weight uint32
	Method Method
	// Drain keeps the realserver's connections but sends it no new ones;
	// weight 0 and Unhealthy do the same.
	Drain     bool
	Unhealthy bool
}

func (r Realserver) eligible() bool { return r.Weight > 0 && !r.Drain && !r.Unhealthy }

// Service is a virtual service and its realservers.
type Service struct {
	ServiceKey
	Scheduler Scheduler
	Timeouts  Timeouts
	// Persistence sends a client's new connections to the realserver of its
	// previous one for this long after that one began (ipvsadm -p); 0 is off.
	Persistence time.Duration
	Realservers []Realserver
}

// State is the desired dataplane configuration.
type State struct {
	Services []Service
	// VIPs are answered on the front interface (ARP, ICMP echo) while their
	// lease holds. Every service VIP is included implicitly.
	VIPs []netip.Addr
	// Gateways are answered on the inside interface: the address NAT
	// realservers route their replies through (203.0.113.254 in the lab).
	Gateways []netip.Addr
	// FrontAddr is the outer source of TUN packets; default: the front
	// interface's first IPv4 address.
	FrontAddr netip.Addr
}

// ConnState is the LVS-style state of a connection.
type ConnState uint8

// Connection states, driven by the client's TCP flags.
const (
	StateNone ConnState = iota
	StateSynRecv
	StateEstablished
	StateFinWait
	StateClose
	StateUDP
)

var stateNames = [...]string{"NONE", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE", "UDP"}

func (s ConnState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ConnKey identifies a connection by its client-side 5-tuple.
type ConnKey struct {
	Proto  Proto
	Client netip.AddrPort
	VIP    netip.AddrPort
}

func (k ConnKey) service() ServiceKey {
	return ServiceKey{VIP: k.VIP.Addr(), Port: k.VIP.Port(), Proto: k.Proto}
}

func (k ConnKey) String() string {
	return fmt.Sprintf("%s %s->%s", k.Proto, k.Client, k.VIP)
}

// Conn is an entry of the connection table.
type Conn struct {
	Key ConnKey
	// Real is the realserver's address and port (its identity within the
	// service on every director).
	Real     netip.AddrPort
	Method   Method
	State    ConnState
	LastSeen time.Time
}

// EventType says what happened to a connection.
type EventType uint8

// Event types.
const (
	EventNew EventType = iota + 1
	EventState
	// EventRefresh re-announces a long-lived connection so replicas do not
	// expire it.
	EventRefresh
	// EventClose reports an entry the sweeper removed.
	EventClose
)

var eventNames = [...]string{"", "new", "state", "refresh", "close"}

func (t EventType) String() string {
	if int(t) < len(eventNames) && t > 0 {
		return eventNames[t]
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Event is a connection-table change for replication.
type Event struct {
	Type EventType
	Conn Conn
}

// Counters are packet, byte and new-connection totals.
type Counters struct {
	Packets uint64
	Bytes   uint64
	Conns   uint64
}

// RealKey identifies a realserver within a service.
type RealKey struct {
	Service ServiceKey
	Real    netip.AddrPort
}

// Stats are the dataplane's counters since Open.
type Stats struct {
	Services    map[ServiceKey]Counters
	Realservers map[RealKey]Counters
	// Active is the number of table connections per realserver (what lc
	// and wlc balance).
	Active  map[RealKey]int64
	Reasons map[Reason]uint64
	// Conns is the connection-table size at the last sweep.
	Conns int
	// ConnCapacity is the connection table's capacity
	// (Config.ConnTableSize), ConnSlots the slots behind it, and
	// TableBytes the memory of the connection and reverse-NAT tables.
	ConnCapacity, ConnSlots, TableBytes int
	// SysctlRepairs counts the times Run found a sysctl that Open set
	// (forwarding, send_redirects; see the package documentation)
	// changed, and set it back.
	SysctlRepairs uint64
}
