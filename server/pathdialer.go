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

	"github.com/raftlb/raftlb/server/health"
)

// Policy routing of path-proving probes. Each DR realserver probed through
// its forwarding path gets a slot i: probe sockets carry the mark
// probeMarkBase+i, a rule at probeRulePriority sends that mark to table
// probeTableBase+i, and the table's one route is a default route via the
// realserver's address, on-link on the front interface. The director owns
// every rule at that priority whose table is in its range, and removes them
// at start (after a crash) and when its checks stop.
const (
	probeRulePriority = 4300
	probeTableBase    = 43000
	probeMarkBase     = 0x52420000
	probeSlots        = 4096
)

// pathDialer proves the forwarding path of DR targets, Seesaw-style: it
// connects to the VIP itself, and policy routing hands exactly those
// packets to the target's MAC, as the dataplane forwards a client's. The
// realserver answers only if it accepts traffic for the VIP (the VIP on lo,
// which a broken agent leaves out), and answers the director straight from
// the VIP, as it answers clients. TUN targets are probed on their own
// address: encapsulating the director's own packets needs an ipip device,
// which the kernel may lack. NAT targets are on the inside network, where
// the realserver's own address is the forwarding path. When the front
// interface's reverse-path filter is strict, the VIP's answers would be
// dropped, so DR targets are probed directly too (logged once).
type pathDialer struct {
	iface  string
	log    *slog.Logger
	direct health.DirectDialer

	mu      sync.Mutex
	nl      *netlink.Handle
	link    netlink.Link
	slots   map[netip.Addr]int // realserver -> slot
	free    []int
	strict  bool // reverse-path filter forbids it: probe directly
	initErr error
	inited  bool
}

func newPathDialer(iface string, log *slog.Logger) *pathDialer {
	return &pathDialer{iface: iface, log: log.With("component", "health-path"), slots: make(map[netip.Addr]int)}
}

// DialContext implements health.Dialer.
func (p *pathDialer) DialContext(ctx context.Context, network string, t health.Target, port uint16) (net.Conn, error) {
	if t.Method != health.MethodDR || !t.Service.VIP.Is4() || !t.Address.Is4() {
		return p.direct.DialContext(ctx, network, t, port)
	}
	mark, ok, err := p.route(t.Address)
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

// route returns the mark that steers a probe to rs, setting up its rule
// and table the first time; false means probe directly.
func (p *pathDialer) route(rs netip.Addr) (uint32, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.inited {
		p.inited = true
		p.initErr = p.init()
		if p.initErr != nil {
			p.log.Warn("probing DR realservers on their own addresses", "err", p.initErr)
		}
	}
	if p.initErr != nil || p.strict {
		return 0, false, nil
	}
	if i, ok := p.slots[rs]; ok {
		return probeMarkBase + uint32(i), true, nil
	}
	if len(p.free) == 0 {
		return 0, false, nil
	}
	i := p.free[len(p.free)-1]
	route := &netlink.Route{
		LinkIndex: p.link.Attrs().Index,
		Gw:        net.IP(rs.AsSlice()),
		Table:     probeTableBase + i,
		Flags:     int(netlink.FLAG_ONLINK),
	}
	if err := p.nl.RouteReplace(route); err != nil {
		return 0, false, fmt.Errorf("add probe route via %s: %w", rs, err)
	}
	rule := p.rule(i)
	if err := p.nl.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
		return 0, false, fmt.Errorf("add probe rule for %s: %w", rs, err)
	}
	p.free = p.free[:len(p.free)-1]
	p.slots[rs] = i
	return probeMarkBase + uint32(i), true, nil
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
		p.log.Warn("strict reverse-path filter on the front interface drops the VIP's answers to probes; probing DR realservers on their own addresses", "iface", p.iface)
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
		p.delSlot(r.Table - probeTableBase)
	}
}

func (p *pathDialer) delSlot(i int) {
	if err := p.nl.RuleDel(p.rule(i)); err != nil && !errors.Is(err, unix.ENOENT) {
		p.log.Warn("delete probe rule", "table", probeTableBase+i, "err", err)
	}
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
// path.
func (p *pathDialer) forget(keep map[netip.Addr]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for rs, i := range p.slots {
		if keep[rs] {
			continue
		}
		p.delSlot(i)
		delete(p.slots, rs)
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
