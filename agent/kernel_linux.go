package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var _ Kernel = (*NetlinkKernel)(nil)

// NetlinkKernel implements Kernel with vishvananda/netlink and /proc/sys.
type NetlinkKernel struct {
	h *netlink.Handle
	// ns, when open, is the namespace sysctls are read and written in; /proc/sys/net
	// follows the network namespace of the thread that opens it.
	ns netns.NsHandle
}

// NewKernel returns the Kernel of the caller's network namespace. Close
// releases its netlink socket.
func NewKernel() (*NetlinkKernel, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return &NetlinkKernel{h: h, ns: netns.None()}, nil
}

// newKernelAt returns a Kernel that works in the namespace ns (tests).
func newKernelAt(ns netns.NsHandle) (*NetlinkKernel, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle in namespace: %w", err)
	}
	return &NetlinkKernel{h: h, ns: ns}, nil
}

// Close releases the netlink socket.
func (k *NetlinkKernel) Close() { k.h.Close() }

func (k *NetlinkKernel) Links() ([]Link, error) {
	ls, err := k.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		link, err := k.convLink(l)
		if err != nil {
			return nil, err
		}
		out = append(out, link)
	}
	return out, nil
}

func (k *NetlinkKernel) LinkByName(name string) (Link, error) {
	l, err := k.link(name)
	if err != nil {
		return Link{}, err
	}
	return k.convLink(l)
}

func (k *NetlinkKernel) link(name string) (netlink.Link, error) {
	l, err := k.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("find link %s: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("find link %s: %w", name, err)
	}
	return l, nil
}

func (k *NetlinkKernel) convLink(l netlink.Link) (Link, error) {
	a := l.Attrs()
	out := Link{Name: a.Name, Index: a.Index, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
	if len(a.HardwareAddr) > 0 {
		out.MAC = a.HardwareAddr.String()
	}
	addrs, err := k.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return Link{}, fmt.Errorf("list addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if p, ok := prefixFromIPNet(ad.IPNet); ok {
			out.Addrs = append(out.Addrs, p)
		}
	}
	return out, nil
}

func (k *NetlinkKernel) AddAddr(link string, p netip.Prefix) error {
	l, err := k.link(link)
	if err != nil {
		return err
	}
	if err := k.h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, link, err)
	}
	return nil
}

func (k *NetlinkKernel) DelAddr(link string, p netip.Prefix) error {
	l, err := k.link(link)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := k.h.AddrDel(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("delete address %s from %s: %w", p, link, err)
	}
	return nil
}

func (k *NetlinkKernel) Routes(table int) ([]Route, error) {
	rs, err := k.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", table, err)
	}
	var out []Route
	for _, r := range rs {
		if r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 {
			continue
		}
		rt := Route{Table: r.Table, LinkIndex: r.LinkIndex, AdvMSS: r.AdvMSS, Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0)}
		if r.Dst != nil {
			p, ok := prefixFromIPNet(r.Dst)
			if !ok {
				continue
			}
			rt.Dst = p
		}
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok && r.Gw != nil {
			rt.Gw = gw
		}
		out = append(out, rt)
	}
	return out, nil
}

func (k *NetlinkKernel) nlRoute(r Route) *netlink.Route {
	nr := &netlink.Route{
		Table:     r.Table,
		Dst:       ipNet(r.Dst),
		LinkIndex: r.LinkIndex,
		AdvMSS:    r.AdvMSS,
		Family:    netlink.FAMILY_V4,
		Protocol:  netlink.RouteProtocol(unix.RTPROT_STATIC),
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr
}

func (k *NetlinkKernel) ReplaceRoute(r Route) error {
	if err := k.h.RouteReplace(k.nlRoute(r)); err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	return nil
}

func (k *NetlinkKernel) DelRoute(r Route) error {
	nr := k.nlRoute(r)
	// Match on table and destination (and gateway): the agent has one route per
	// destination in its tables, and the device may have been renumbered.
	nr.LinkIndex, nr.Protocol, nr.AdvMSS, nr.Scope = 0, 0, 0, netlink.SCOPE_NOWHERE
	if err := k.h.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

func (k *NetlinkKernel) Rules() ([]Rule, error) {
	rs, err := k.h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	var out []Rule
	for _, r := range rs {
		// Only "from SRC [ipproto P sport N] lookup TABLE" rules can be the agent's.
		if r.Src == nil || r.Dst != nil || r.IifName != "" || r.OifName != "" || r.Mark != 0 || r.Invert ||
			r.Tos != 0 || r.Dport != nil || r.UIDRange != nil || r.Goto > 0 || r.Table == 0 ||
			r.Sport != nil && r.Sport.Start != r.Sport.End {
			continue
		}
		p, ok := prefixFromIPNet(r.Src)
		if !ok {
			continue
		}
		rule := Rule{Priority: r.Priority, Src: p, Proto: r.IPProto, Table: r.Table}
		if r.Sport != nil {
			rule.Sport = r.Sport.Start
		}
		out = append(out, rule)
	}
	return out, nil
}

func (k *NetlinkKernel) nlRule(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = netlink.FAMILY_V4
	nr.Priority = r.Priority
	nr.Table = r.Table
	nr.Src = ipNet(r.Src)
	nr.IPProto = r.Proto
	if r.Sport != 0 {
		nr.Sport = netlink.NewRulePortRange(r.Sport, r.Sport)
	}
	return nr
}

func (k *NetlinkKernel) AddRule(r Rule) error {
	if err := k.h.RuleAdd(k.nlRule(r)); err != nil {
		return fmt.Errorf("add rule %s: %w", r, err)
	}
	return nil
}

func (k *NetlinkKernel) DelRule(r Rule) error {
	if err := k.h.RuleDel(k.nlRule(r)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete rule %s: %w", r, err)
	}
	return nil
}

// sysctlPath maps "net/ipv4/conf/all/arp_ignore" into /proc/sys, refusing
// names that would leave it.
func sysctlPath(name string) (string, error) {
	p := filepath.Join("/proc/sys", filepath.Clean("/"+name))
	if name == "" || strings.Contains(name, "..") {
		return "", fmt.Errorf("sysctl %q: invalid name", name)
	}
	return p, nil
}

func (k *NetlinkKernel) Sysctl(name string) (string, error) {
	p, err := sysctlPath(name)
	if err != nil {
		return "", err
	}
	var b []byte
	err = k.inNS(func() error {
		var rerr error
		b, rerr = os.ReadFile(p)
		return rerr
	})
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read sysctl %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (k *NetlinkKernel) SetSysctl(name, value string) error {
	p, err := sysctlPath(name)
	if err != nil {
		return err
	}
	err = k.inNS(func() error {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(value + "\n"); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("write sysctl %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("write sysctl %s: %w", name, err)
	}
	return nil
}

// inNS runs fn on a thread in k.ns, or directly when k works in the caller's
// namespace.
func (k *NetlinkKernel) inNS(fn func() error) error {
	if !k.ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine instead of going
		// back to the scheduler in another namespace.
		runtime.LockOSThread()
		if err := netns.Set(k.ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func (k *NetlinkKernel) AddIPIPTunnel(name string) error {
	// A flow-based ("external") device receives IP-in-IP from any outer source
	// without clashing with the fallback tunl0, which has the same all-zero
	// endpoints a plain "local any remote any" device would have.
	t := &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: name}, FlowBased: true}
	if err := k.h.LinkAdd(t); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPROTONOSUPPORT) {
			return fmt.Errorf("add ipip link %s: %w: %w", name, ErrNotSupported, err)
		}
		return fmt.Errorf("add ipip link %s: %w", name, err)
	}
	return k.SetLinkUp(name)
}

func (k *NetlinkKernel) SetLinkUp(name string) error {
	l, err := k.link(name)
	if err != nil {
		return err
	}
	if err := k.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link %s up: %w", name, err)
	}
	return nil
}

func (k *NetlinkKernel) DelLink(name string) error {
	l, err := k.link(name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := k.h.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip4 := n.IP.To4()
	if ip4 == nil {
		return netip.Prefix{}, false
	}
	a, _ := netip.AddrFromSlice(ip4)
	ones, bits := n.Mask.Size()
	if bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
