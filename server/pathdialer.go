package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/raftlb/raftlb/dataplane"
	"github.com/raftlb/raftlb/server/health"
)

// Policy routing of path-proving probes. Each DR or TUN realserver probed
// through its forwarding path gets a slot i: probe sockets carry the mark
// probeMarkBase+i, a rule at probeRulePriority sends that mark to table
// probeTableBase+i, and the table's one route is a default route on the
// front interface: for DR via the realserver's address, on-link; for TUN
// via the realserver's next hop, with room for the outer header in its
// MTU, and the dataplane encapsulates packets with the mark to the
// realserver. The director owns every rule at that priority whose table
// is in its range, and removes them at start (after a crash) and when its
// checks stop.
const (
	probeRulePriority = 4300
	probeTableBase    = 43000
	probeMarkBase     = 0x52420000
	probeSlots        = 4096
	ipipOverhead      = 20
)

// tunProber is the dataplane's encapsulation of marked TUN probes
// (*dataplane.Dataplane implements it).
type tunProber interface {
	SetTunProbe(mark uint32, rs netip.Addr) error
	DeleteTunProbe(mark uint32) error
}

var _ tunProber = (*dataplane.Dataplane)(nil)

// probeKey names a slot: the same address may be DR in one service and TUN
// in another, and the two paths differ.
type probeKey struct {
	addr netip.Addr
	tun  bool
}

// pathDialer proves the forwarding path of DR and TUN targets,
// Seesaw-style: it connects to the VIP itself, and policy routing hands
// exactly those packets to the target's MAC (DR), or to its next hop with
// the dataplane's TC egress program encapsulating them to the target
// (TUN), as the dataplane forwards a client's. No ipip device is needed.
// The realserver answers only if it accepts traffic for the VIP (the VIP on
// lo, and decapsulation for TUN, which a broken agent leaves out), and
// answers the director straight from the VIP, as it answers clients. NAT
// targets are on the inside network, where the realserver's own address is
// the forwarding path. Without the dataplane's encapsulation, TUN targets
// are probed on their own addresses. When the front interface's
// reverse-path filter is strict, the VIP's answers would be dropped, so DR
// and TUN targets are probed directly too (logged once).
type pathDialer struct {
	iface  string
	log    *slog.Logger
	direct health.DirectDialer
	tun    tunProber // nil: TUN targets are probed directly

	mu      sync.Mutex
	nl      *netlink.Handle
	link    netlink.Link
	slots   map[probeKey]int
	free    []int
	strict  bool // reverse-path filter forbids it: probe directly
	initErr error
	inited  bool
}

func newPathDialer(iface string, tun tunProber, log *slog.Logger) *pathDialer {
	return &pathDialer{iface: iface, tun: tun, log: log.With("component", "health-path"), slots: make(map[probeKey]int)}
}

// pathProbed reports whether t's probes take its forwarding path, and how.
func (p *pathDialer) pathProbed(t health.Target) (probeKey, bool) {
	k := probeKey{addr: t.Address, tun: t.Method == health.MethodTUN}
	if !t.Service.VIP.Is4() || !t.Address.Is4() {
		return k, false
	}
	return k, t.Method == health.MethodDR || (k.tun && p.tun != nil)
}

// DialContext implements health.Dialer.
func (p *pathDialer) DialContext(ctx context.Context, network string, t health.Target, port uint16) (net.Conn, error) {
	key, ok := p.pathProbed(t)
	if !ok {
		return p.direct.DialContext(ctx, network, t, port)
	}
	mark, ok, err := p.route(key)
	if err != nil {
		return nil, err
	}
	if !ok {
		return p.direct.DialContext(ctx, network, t, port)
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return fmt.Errorf("set probe mark: %w", err)
		}
		if serr != nil {
			return fmt.Errorf("set probe mark: %w", serr)
		}
		return nil
	}}
	conn, err := d.DialContext(ctx, network, netip.AddrPortFrom(t.Service.VIP, port).String())
	if err != nil {
		return nil, fmt.Errorf("dial vip through realserver %s: %w", t.Address, err)
	}
	return conn, nil
}

// route returns the mark that steers a probe to k, setting up its rule
// and table (and for TUN its encapsulation) the first time; false means
// probe directly.
func (p *pathDialer) route(k probeKey) (uint32, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.inited {
		p.inited = true
		p.initErr = p.init()
		if p.initErr != nil {
			p.log.Warn("probing DR and TUN realservers on their own addresses", "err", p.initErr)
		}
	}
	if p.initErr != nil || p.strict {
		return 0, false, nil
	}
	if i, ok := p.slots[k]; ok {
		return probeMarkBase + uint32(i), true, nil
	}
	if len(p.free) == 0 {
		return 0, false, nil
	}
	i := p.free[len(p.free)-1]
	mark := probeMarkBase + uint32(i)
	route := &netlink.Route{
		LinkIndex: p.link.Attrs().Index,
		Gw:        net.IP(k.addr.AsSlice()),
		Table:     probeTableBase + i,
		Flags:     int(netlink.FLAG_ONLINK),
	}
	if k.tun {
		hop, err := p.nextHop(k.addr)
		if err != nil {
			return 0, false, err
		}
		route.Gw = net.IP(hop.AsSlice())
		// The kernel then sizes segments (and the MSS) for the tunnel.
		route.MTU = p.link.Attrs().MTU - ipipOverhead
		// Before the rule exists: a marked probe must never leave bare.
		if err := p.tun.SetTunProbe(mark, k.addr); err != nil {
			return 0, false, fmt.Errorf("set tun probe for %s: %w", k.addr, err)
		}
	}
	if err := p.nl.RouteReplace(route); err != nil {
		p.delSlot(i, k.tun)
		return 0, false, fmt.Errorf("add probe route for %s: %w", k.addr, err)
	}
	rule := p.rule(i)
	if err := p.nl.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
		p.delSlot(i, k.tun)
		return 0, false, fmt.Errorf("add probe rule for %s: %w", k.addr, err)
	}
	p.free = p.free[:len(p.free)-1]
	p.slots[k] = i
	return mark, true, nil
}

// nextHop is the front interface's next hop towards rs, as the dataplane
// finds it for forwarded TUN traffic.
func (p *pathDialer) nextHop(rs netip.Addr) (netip.Addr, error) {
	routes, err := p.nl.RouteGet(net.IP(rs.AsSlice()))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("get route to %s: %w", rs, err)
	}
	if len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("get route to %s: no route", rs)
	}
	if routes[0].LinkIndex != p.link.Attrs().Index {
		return netip.Addr{}, fmt.Errorf("get route to %s: leaves through ifindex %d, not %s", rs, routes[0].LinkIndex, p.iface)
	}
	if gw, ok := netip.AddrFromSlice(routes[0].Gw.To4()); ok && !gw.IsUnspecified() {
		return gw, nil
	}
	return rs, nil
}

func (p *pathDialer) rule(i int) *netlink.Rule {
	r := netlink.NewRule()
	r.Priority = probeRulePriority
	r.Mark = probeMarkBase + uint32(i)
	mask := uint32(0xffffffff)
	r.Mask = &mask
	r.Table = probeTableBase + i
	r.Family = netlink.FAMILY_V4
	return r
}

// init opens netlink, checks the reverse-path filter and removes rules a
// previous run left behind.
func (p *pathDialer) init() error {
	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	link, err := nl.LinkByName(p.iface)
	if err != nil {
		nl.Close()
		return fmt.Errorf("look up interface %s: %w", p.iface, err)
	}
	p.nl, p.link = nl, link
	if rpFilter("all") == 1 || rpFilter(p.iface) == 1 {
		p.strict = true
		p.log.Warn("strict reverse-path filter on the front interface drops the VIP's answers to probes; probing DR and TUN realservers on their own addresses", "iface", p.iface)
	}
	p.removeStale()
	for i := probeSlots - 1; i >= 0; i-- {
		p.free = append(p.free, i)
	}
	return nil
}

// rpFilter reads net.ipv4.conf.<iface>.rp_filter; -1 when unreadable.
func rpFilter(iface string) int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + iface + "/rp_filter")
	if err != nil {
		return -1
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return v
}

// removeStale deletes the probe rules and routes this director owns.
func (p *pathDialer) removeStale() {
	rules, err := p.nl.RuleList(netlink.FAMILY_V4)
	if err != nil {
		p.log.Warn("list rules", "err", err)
		return
	}
	for _, r := range rules {
		if r.Priority != probeRulePriority || r.Table < probeTableBase || r.Table >= probeTableBase+probeSlots {
			continue
		}
		// The dataplane's encapsulations died with the previous run.
		p.delSlot(r.Table-probeTableBase, false)
	}
}

func (p *pathDialer) delSlot(i int, tun bool) {
	if err := p.nl.RuleDel(p.rule(i)); err != nil && !errors.Is(err, unix.ENOENT) {
		p.log.Warn("delete probe rule", "table", probeTableBase+i, "err", err)
	}
	// After the rule: a marked packet either is encapsulated or takes no
	// probe route at all.
	defer func() {
		if !tun {
			return
		}
		// A closed dataplane has no encapsulations left to delete.
		if err := p.tun.DeleteTunProbe(probeMarkBase + uint32(i)); err != nil && !errors.Is(err, dataplane.ErrClosed) {
			p.log.Warn("delete tun probe", "mark", probeMarkBase+i, "err", err)
		}
	}()
	routes, err := p.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: probeTableBase + i}, netlink.RT_FILTER_TABLE)
	if err != nil {
		p.log.Warn("list probe routes", "table", probeTableBase+i, "err", err)
		return
	}
	for _, rt := range routes {
		if err := p.nl.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			p.log.Warn("delete probe route", "table", probeTableBase+i, "err", err)
		}
	}
}

// forget releases the slots of realservers no longer probed through their
// path: those of targets not in keep.
func (p *pathDialer) forget(keep map[health.Target]health.Check) {
	want := make(map[probeKey]bool)
	for t := range keep {
		if k, ok := p.pathProbed(t); ok {
			want[k] = true
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, i := range p.slots {
		if want[k] {
			continue
		}
		p.delSlot(i, k.tun)
		delete(p.slots, k)
		p.free = append(p.free, i)
	}
}

// close removes every rule and route it added.
func (p *pathDialer) close() {
	p.forget(nil)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nl != nil {
		p.nl.Close()
		p.nl = nil
	}
	p.initErr = errors.New("closed")
}
