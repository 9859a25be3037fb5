package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// neighbours finds the next-hop MACs of DR and TUN realservers. Behind an
// interface so tests run without a kernel neighbour table.
type neighbours interface {
	// lookup returns the next-hop MACs it knows and asks the kernel to
	// resolve (and keep resolved) the others.
	lookup(addrs []netip.Addr) map[netip.Addr]net.HardwareAddr
}

// kernelNeighbours reads the kernel's route and neighbour tables.
type kernelNeighbours struct {
	nl   *netlink.Handle
	link int
	log  *slog.Logger
}

func (k *kernelNeighbours) close() { k.nl.Close() }

func (k *kernelNeighbours) lookup(addrs []netip.Addr) map[netip.Addr]net.HardwareAddr {
	out := make(map[netip.Addr]net.HardwareAddr, len(addrs))
	if len(addrs) == 0 {
		return out
	}
	hops := make(map[netip.Addr]netip.Addr, len(addrs))
	for _, a := range addrs {
		hop, err := k.nextHop(a)
		if err != nil {
			k.log.Warn("no next hop", "addr", a, "err", err)
			continue
		}
		hops[a] = hop
	}
	ns, err := k.nl.NeighList(k.link, netlink.FAMILY_V4)
	if err != nil {
		k.log.Warn("list neighbours", "err", err)
		return out
	}
	known := make(map[netip.Addr]net.HardwareAddr, len(ns))
	const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	managed := make(map[netip.Addr]bool, len(ns))
	for _, n := range ns {
		ip, ok := netip.AddrFromSlice(n.IP.To4())
		if !ok {
			continue
		}
		managed[ip] = n.FlagsExt&netlink.NTF_EXT_MANAGED != 0
		if n.State&usable != 0 && len(n.HardwareAddr) == 6 {
			known[ip] = n.HardwareAddr
		}
	}
	for a, hop := range hops {
		if mac, ok := known[hop]; ok {
			out[a] = mac
		}
		if !managed[hop] {
			k.manage(hop)
		}
	}
	return out
}

// nextHop is addr itself when on-link, else the route's gateway; the route
// must leave through the front interface, the only one XDP_TX reaches.
func (k *kernelNeighbours) nextHop(addr netip.Addr) (netip.Addr, error) {
	rs, err := k.nl.RouteGet(net.IP(addr.AsSlice()))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("get route to %s: %w", addr, err)
	}
	if len(rs) == 0 {
		return netip.Addr{}, fmt.Errorf("get route to %s: no route", addr)
	}
	if rs[0].LinkIndex != k.link {
		return netip.Addr{}, fmt.Errorf("route to %s leaves through ifindex %d, not the front interface: %w", addr, rs[0].LinkIndex, ErrInvalid)
	}
	if gw, ok := netip.AddrFromSlice(rs[0].Gw.To4()); ok && gw.IsValid() && !gw.IsUnspecified() {
		return gw, nil
	}
	return addr, nil
}

// manage turns the neighbour into a kernel-managed entry (NTF_EXT_MANAGED,
// Linux 5.16+), which the kernel resolves now and keeps resolved, so the
// packet path never finds it missing.
func (k *kernelNeighbours) manage(hop netip.Addr) {
	n := &netlink.Neigh{
		LinkIndex: k.link,
		Family:    netlink.FAMILY_V4,
		IP:        net.IP(hop.AsSlice()),
		State:     netlink.NUD_NONE,
		FlagsExt:  netlink.NTF_EXT_MANAGED,
	}
	err := k.nl.NeighSet(n)
	if err == nil {
		return
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
		k.log.Warn("add managed neighbour", "addr", hop, "err", err)
	}
	// Older kernels: NTF_USE at least starts a resolution.
	n.FlagsExt = 0
	n.Flags = netlink.NTF_USE
	if err := k.nl.NeighSet(n); err != nil {
		k.log.Warn("resolve neighbour", "addr", hop, "err", err)
	}
}
