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
	// retain undoes what lookup set up for next hops that none of addrs,
	// every address still in use, needs any more.
	retain(addrs []netip.Addr)
}

// retainNeighbours releases the neighbour entries set up for next hops
// that no DR or TUN realserver needs any more.
func (d *Dataplane) retainNeighbours() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.neigh.retain(d.nextHops())
	return nil
}

// nextHops lists the addresses of the DR and TUN realservers: the packet
// path sends to their MACs. Call with d.mu held.
func (d *Dataplane) nextHops() []netip.Addr {
	var hops []netip.Addr
	for _, ri := range d.st.reals {
		if ri.rs.Method != NAT {
			hops = append(hops, ri.rs.Addr)
		}
	}
	return hops
}

// kernelNeighbours reads the kernel's route and neighbour tables and keeps
// the next hops it is asked for resolved.
//
// It leaves every neighbour entry as it found it, except:
//   - where there was none, it adds a kernel-managed one (NTF_EXT_MANAGED,
//     Linux 5.16+; on older kernels NTF_USE, a plain entry resolved once
//     per refresh) and deletes it again when released;
//   - a dynamic entry (one the kernel learned, or an administrator's
//     without nud permanent or noarp) it marks managed, so that the
//     kernel keeps it resolved, and when released clears that flag again,
//     leaving the entry and its MAC in place as STALE, the state an
//     unconfirmed dynamic entry is in anyway (FAILED if it has no MAC);
//     the kernel then reconfirms or ages it as if it had never been
//     marked.
//
// Permanent and noarp entries are never touched: they are resolved for
// good, and marking one managed would strip its NUD_PERMANENT and its MAC.
// Nor is an entry found managed already, or one that an administrator
// changed since it was set up (made permanent, or its managed flag
// cleared): such an entry is forgotten, never deleted. Entries are
// released by retain when no address needs their next hop any more, and
// by close; entries left by a process that died are not recognised as
// its own.
//
// Not safe for concurrent use: the Dataplane calls it under its mutex.
type kernelNeighbours struct {
	nl   *netlink.Handle
	link int
	log  *slog.Logger
	// held are the entries set up here, by next hop.
	held map[netip.Addr]neighHold
	// hops is the last next hop found for each address, so that an
	// address whose route lookup fails for a moment keeps its entry.
	hops map[netip.Addr]netip.Addr
}

// neighHold says how an entry came to be held and so how to release it.
type neighHold struct {
	// created: there was no entry; release deletes it. Otherwise the
	// entry was dynamic; release clears its managed flag.
	created bool
	// managed: the entry was given NTF_EXT_MANAGED (not so with the
	// NTF_USE fallback). A managed entry that lost the flag was taken
	// over by someone else.
	managed bool
}

func newKernelNeighbours(nl *netlink.Handle, link int, log *slog.Logger) *kernelNeighbours {
	return &kernelNeighbours{
		nl:   nl,
		link: link,
		log:  log,
		held: make(map[netip.Addr]neighHold),
		hops: make(map[netip.Addr]netip.Addr),
	}
}

// close releases every held entry and closes the netlink handle.
func (k *kernelNeighbours) close() {
	k.retain(nil)
	k.nl.Close()
}

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
		k.hops[a] = hop
	}
	cur, err := k.list()
	if err != nil {
		k.log.Warn("list neighbours", "err", err)
		return out
	}
	done := make(map[netip.Addr]bool, len(hops))
	for a, hop := range hops {
		n, ok := cur[hop]
		if ok && usable(n) {
			out[a] = n.HardwareAddr
		}
		if !done[hop] {
			done[hop] = true
			k.keep(hop, n, ok)
		}
	}
	return out
}

// keep makes sure the kernel keeps hop resolved; n is its entry, if ok.
func (k *kernelNeighbours) keep(hop netip.Addr, n netlink.Neigh, ok bool) {
	if h, held := k.held[hop]; held && (!ok || !h.owns(n)) {
		if ok {
			k.log.Info("neighbour entry changed by someone else, leaving it to them", "addr", hop)
		}
		delete(k.held, hop)
	}
	switch {
	case !ok:
		k.create(hop)
	case static(n) || n.FlagsExt&netlink.NTF_EXT_MANAGED != 0:
		// Resolved for good, or kept resolved already.
	default:
		k.adopt(hop)
	}
}

// create adds a managed entry where there was none. An entry that
// appeared in the meantime (EEXIST) is someone else's; the next refresh
// finds it.
func (k *kernelNeighbours) create(hop netip.Addr) {
	n := k.neigh(hop)
	n.FlagsExt = netlink.NTF_EXT_MANAGED
	err := k.nl.NeighAdd(n)
	if err == nil {
		k.held[hop] = neighHold{created: true, managed: true}
		return
	}
	if errors.Is(err, unix.EEXIST) {
		return
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
		k.log.Warn("add managed neighbour", "addr", hop, "err", err)
	}
	// Older kernels: NTF_USE at least starts a resolution.
	n.FlagsExt = 0
	n.Flags = netlink.NTF_USE
	if err := k.nl.NeighAdd(n); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			k.log.Warn("resolve neighbour", "addr", hop, "err", err)
		}
		return
	}
	k.held[hop] = neighHold{created: true}
}

// adopt marks a dynamic entry managed (Linux 5.16+), which the kernel
// resolves now and keeps resolved, so the packet path never finds it
// missing.
func (k *kernelNeighbours) adopt(hop netip.Addr) {
	n := k.neigh(hop)
	n.FlagsExt = netlink.NTF_EXT_MANAGED
	err := k.nl.NeighSet(n)
	if err == nil {
		if _, held := k.held[hop]; !held {
			k.held[hop] = neighHold{managed: true}
		}
		return
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
		k.log.Warn("mark neighbour managed", "addr", hop, "err", err)
	}
	// Older kernels: NTF_USE starts a resolution and changes nothing else.
	n.FlagsExt = 0
	n.Flags = netlink.NTF_USE
	if err := k.nl.NeighSet(n); err != nil {
		k.log.Warn("resolve neighbour", "addr", hop, "err", err)
	}
}

// retain releases the held entries of next hops that none of addrs needs.
func (k *kernelNeighbours) retain(addrs []netip.Addr) {
	need := make(map[netip.Addr]bool, len(addrs))
	hops := make(map[netip.Addr]netip.Addr, len(addrs))
	for _, a := range addrs {
		if hop, ok := k.hops[a]; ok {
			hops[a] = hop
			need[hop] = true
		}
	}
	k.hops = hops
	var cur map[netip.Addr]netlink.Neigh
	for hop, h := range k.held {
		if need[hop] {
			continue
		}
		if cur == nil {
			var err error
			if cur, err = k.list(); err != nil {
				k.log.Warn("list neighbours", "err", err)
				return
			}
		}
		if err := k.release(hop, h, cur); err != nil {
			k.log.Warn("release neighbour", "addr", hop, "err", err)
			continue // again on the next refresh
		}
		delete(k.held, hop)
	}
}

// release undoes what create or adopt did to hop's entry, if the entry
// is still as they left it.
func (k *kernelNeighbours) release(hop netip.Addr, h neighHold, cur map[netip.Addr]netlink.Neigh) error {
	n, ok := cur[hop]
	if !ok {
		return nil // gone already
	}
	if !h.owns(n) {
		k.log.Info("neighbour entry changed by someone else, leaving it to them", "addr", hop)
		return nil
	}
	if h.created {
		err := k.nl.NeighDel(k.neigh(hop))
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete neighbour %s: %w", hop, err)
		}
		k.log.Debug("neighbour entry removed", "addr", hop)
		return nil
	}
	if !h.managed {
		return nil // NTF_USE changed nothing
	}
	r := k.neigh(hop)
	r.State = netlink.NUD_FAILED
	if usable(n) {
		r.State = netlink.NUD_STALE
		r.HardwareAddr = n.HardwareAddr
	}
	// An administrative update without NTF_EXT_MANAGED clears the flag.
	if err := k.nl.NeighSet(r); err != nil {
		return fmt.Errorf("unmark neighbour %s: %w", hop, err)
	}
	k.log.Debug("neighbour entry no longer managed", "addr", hop)
	return nil
}

// owns reports whether n is still the entry h set up.
func (h neighHold) owns(n netlink.Neigh) bool {
	return !static(n) && (!h.managed || n.FlagsExt&netlink.NTF_EXT_MANAGED != 0)
}

// static reports a permanent or noarp entry.
func static(n netlink.Neigh) bool {
	return n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0
}

// usable reports an entry whose MAC the programs may use.
func usable(n netlink.Neigh) bool {
	const states = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	return n.State&states != 0 && len(n.HardwareAddr) == 6
}

func (k *kernelNeighbours) neigh(hop netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: k.link,
		Family:    netlink.FAMILY_V4,
		IP:        net.IP(hop.AsSlice()),
		State:     netlink.NUD_NONE,
	}
}

// list returns the front interface's IPv4 neighbour entries by address.
func (k *kernelNeighbours) list() (map[netip.Addr]netlink.Neigh, error) {
	ns, err := k.nl.NeighList(k.link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	out := make(map[netip.Addr]netlink.Neigh, len(ns))
	for _, n := range ns {
		if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok {
			out[ip] = n
		}
	}
	return out, nil
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
