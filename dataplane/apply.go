package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

type svcInfo struct {
	id       uint32
	svc      Service
	timeouts Timeouts
	table    []uint32
}

type realInfo struct {
	key RealKey
	idx uint32
	rs  Realserver
	mac net.HardwareAddr
}

type ownedInfo struct {
	leaseIdx uint32
	flags    uint32
}

// applied is what the maps hold, as Go last wrote it.
type applied struct {
	svcs      map[ServiceKey]*svcInfo
	byID      map[uint32]*svcInfo
	reals     map[RealKey]*realInfo
	realByIdx map[uint32]*realInfo
	owned     map[netip.Addr]ownedInfo
	tables    map[uint32]*ebpf.Map
	adjust    map[uint32]int64 // rs_adjust, which only Go writes
	svcIDs    idAlloc
	realIDs   idAlloc
	leaseIDs  idAlloc
	frontAddr netip.Addr
	conns     int
}

// Capacities, mirroring bpf/lb.h.
const (
	maxServices = 512
	maxReals    = 4096
	maxOwned    = 512
)

func newApplied() applied {
	return applied{
		svcs:      make(map[ServiceKey]*svcInfo),
		byID:      make(map[uint32]*svcInfo),
		reals:     make(map[RealKey]*realInfo),
		realByIdx: make(map[uint32]*realInfo),
		owned:     make(map[netip.Addr]ownedInfo),
		tables:    make(map[uint32]*ebpf.Map),
		adjust:    make(map[uint32]int64),
		svcIDs:    newIDAlloc(maxServices),
		realIDs:   newIDAlloc(maxReals),
		leaseIDs:  newIDAlloc(maxOwned),
	}
}

func (d *Dataplane) validate(s State) error {
	seen := make(map[ServiceKey]bool)
	for _, svc := range s.Services {
		k := svc.ServiceKey
		switch {
		case !k.VIP.Is4():
			return fmt.Errorf("validate service %s: VIP must be IPv4: %w", k, ErrInvalid)
		case k.Port == 0:
			return fmt.Errorf("validate service %s: port 0: %w", k, ErrInvalid)
		case k.Proto != TCP && k.Proto != UDP:
			return fmt.Errorf("validate service %s: protocol: %w", k, ErrInvalid)
		case svc.Scheduler > WLC:
			return fmt.Errorf("validate service %s: scheduler %s: %w", k, svc.Scheduler, ErrInvalid)
		case svc.Persistence < 0:
			return fmt.Errorf("validate service %s: negative persistence: %w", k, ErrInvalid)
		case seen[k]:
			return fmt.Errorf("validate service %s: duplicate: %w", k, ErrInvalid)
		}
		seen[k] = true
		rseen := make(map[netip.AddrPort]bool)
		for _, r := range svc.Realservers {
			ap := netip.AddrPortFrom(r.Addr, r.Port)
			switch {
			case !r.Addr.Is4():
				return fmt.Errorf("validate realserver %s of %s: address must be IPv4: %w", ap, k, ErrInvalid)
			case r.Method > NAT:
				return fmt.Errorf("validate realserver %s of %s: method %s: %w", ap, k, r.Method, ErrInvalid)
			case r.Method != NAT && r.Port != k.Port:
				return fmt.Errorf("validate realserver %s of %s: %s cannot change the port: %w", ap, k, r.Method, ErrInvalid)
			case r.Method == NAT && r.Port == 0:
				return fmt.Errorf("validate realserver %s of %s: port 0: %w", ap, k, ErrInvalid)
			case r.Method == NAT && d.inside.index == 0:
				return fmt.Errorf("validate realserver %s of %s: NAT needs an inside interface: %w", ap, k, ErrInvalid)
			case rseen[ap]:
				return fmt.Errorf("validate realserver %s of %s: duplicate: %w", ap, k, ErrInvalid)
			}
			rseen[ap] = true
		}
	}
	for _, a := range slices.Concat(s.VIPs, s.Gateways) {
		if !a.Is4() {
			return fmt.Errorf("validate owned address %s: must be IPv4: %w", a, ErrInvalid)
		}
	}
	return nil
}

// Apply makes the maps hold s: services, realservers, lookup tables and
// owned addresses. It is idempotent and keeps indexes, tables and leases
// of what did not change. Connections are untouched: an existing one keeps
// its realserver while that realserver stays configured (even drained);
// a connection whose realserver was removed is rescheduled by its next
// packet (a TCP peer then sees a reset from the new realserver).
func (d *Dataplane) Apply(s State) error {
	if err := d.validate(s); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	// Services leave before their addresses do, so that a freed lease
	// slot handed to another address never gates a stale service.
	if err := d.removeServices(s.Services); err != nil {
		return err
	}
	if err := d.applyOwned(s); err != nil {
		return err
	}
	if err := d.applyServices(s.Services); err != nil {
		return err
	}
	if s.FrontAddr != d.st.frontAddr {
		if err := d.writeConfig(s.FrontAddr); err != nil {
			return err
		}
		d.st.frontAddr = s.FrontAddr
	}
	return nil
}

func (d *Dataplane) applyOwned(s State) error {
	want := make(map[netip.Addr]uint32)
	for _, svc := range s.Services {
		want[svc.VIP] |= ownFront
	}
	for _, a := range s.VIPs {
		want[a] |= ownFront
	}
	for _, a := range s.Gateways {
		want[a] |= ownInside
	}
	for a, o := range d.st.owned {
		if _, ok := want[a]; ok {
			continue
		}
		if err := d.index.del(ownedIndexKey(a)); err != nil {
			return fmt.Errorf("delete owned address %s: %w", a, err)
		}
		d.leaseMu.Lock()
		delete(d.leaseIdx, a)
		err := d.objs.Leases.Put(o.leaseIdx, uint64(0))
		d.leaseMu.Unlock()
		if err != nil {
			return fmt.Errorf("clear lease of %s: %w", a, err)
		}
		d.st.leaseIDs.put(o.leaseIdx)
		delete(d.st.owned, a)
	}
	for a, flags := range want {
		o, ok := d.st.owned[a]
		if ok && o.flags == flags {
			continue
		}
		if !ok {
			idx, free := d.st.leaseIDs.take()
			if !free {
				return fmt.Errorf("add owned address %s: more than %d: %w", a, maxOwned, ErrInvalid)
			}
			o.leaseIdx = idx
			d.leaseMu.Lock()
			err := d.objs.Leases.Put(idx, d.leases[a])
			if err == nil {
				d.leaseIdx[a] = idx
			}
			d.leaseMu.Unlock()
			if err != nil {
				d.st.leaseIDs.put(idx)
				return fmt.Errorf("write lease of %s: %w", a, err)
			}
		}
		o.flags = flags
		if err := d.index.put(ownedIndexKey(a), ownedIndexVal(o.leaseIdx, flags)); err != nil {
			return fmt.Errorf("write owned address %s: %w", a, err)
		}
		d.st.owned[a] = o
	}
	return nil
}

func (d *Dataplane) removeServices(svcs []Service) error {
	want := make(map[ServiceKey]bool, len(svcs))
	for _, s := range svcs {
		want[s.ServiceKey] = true
	}
	for k, si := range d.st.svcs {
		if !want[k] {
			if err := d.removeService(si); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *Dataplane) applyServices(svcs []Service) error {
	var hops []netip.Addr
	for _, s := range svcs {
		for _, r := range s.Realservers {
			if r.Method != NAT {
				hops = append(hops, r.Addr)
			}
		}
	}
	macs := d.neigh.lookup(hops)
	for _, s := range svcs {
		if err := d.applyService(s, macs); err != nil {
			return err
		}
	}
	return nil
}

func (d *Dataplane) removeService(si *svcInfo) error {
	k := si.svc.ServiceKey
	// Out of the index first: a packet that still finds the id sees an
	// entry whose key no longer matches.
	if err := d.index.del(svcIndexKey(k)); err != nil {
		return fmt.Errorf("delete service %s: %w", k, err)
	}
	if err := d.objs.Services.Put(si.id, directorSvc{}); err != nil {
		return fmt.Errorf("delete service %s: %w", k, err)
	}
	if err := d.objs.SvcTables.Delete(si.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete table of %s: %w", k, err)
	}
	if m := d.st.tables[si.id]; m != nil {
		m.Close()
		delete(d.st.tables, si.id)
	}
	for _, r := range si.svc.Realservers {
		if err := d.removeReal(RealKey{k, netip.AddrPortFrom(r.Addr, r.Port)}); err != nil {
			return err
		}
	}
	d.st.svcIDs.put(si.id)
	delete(d.st.svcs, k)
	delete(d.st.byID, si.id)
	return nil
}

func (d *Dataplane) removeReal(k RealKey) error {
	ri := d.st.reals[k]
	if ri == nil {
		return nil
	}
	// An invalid slot makes the connections that still point here
	// reschedule on their next packet.
	if err := d.objs.Reals.Put(ri.idx, directorReal{}); err != nil {
		return fmt.Errorf("clear realserver %s: %w", k.Real, err)
	}
	d.st.realIDs.put(ri.idx)
	delete(d.st.reals, k)
	delete(d.st.realByIdx, ri.idx)
	return nil
}

func (d *Dataplane) refreshInterval(t Timeouts) time.Duration {
	return min(d.cfg.RefreshInterval, min(t.TCPEstablished, t.UDP, t.TCPFinWait)/3)
}

func (d *Dataplane) applyService(s Service, macs map[netip.Addr]net.HardwareAddr) error {
	k := s.ServiceKey
	si := d.st.svcs[k]
	fresh := si == nil
	if fresh {
		id, ok := d.st.svcIDs.take()
		if !ok {
			return fmt.Errorf("add service %s: more than %d services: %w", k, maxServices, ErrInvalid)
		}
		si = &svcInfo{id: id}
		if err := zeroPerCPU(d.objs.SvcStats, id); err != nil {
			return err
		}
		if err := d.objs.RrCursor.Put(id, uint32(0)); err != nil {
			return fmt.Errorf("reset cursor of %s: %w", k, err)
		}
	}
	// Realservers that left the service.
	keep := make(map[netip.AddrPort]bool, len(s.Realservers))
	for _, r := range s.Realservers {
		keep[netip.AddrPortFrom(r.Addr, r.Port)] = true
	}
	for _, r := range si.svc.Realservers {
		if ap := netip.AddrPortFrom(r.Addr, r.Port); !keep[ap] {
			if err := d.removeReal(RealKey{k, ap}); err != nil {
				return err
			}
		}
	}
	var cands []candidate
	for _, r := range s.Realservers {
		rk := RealKey{k, netip.AddrPortFrom(r.Addr, r.Port)}
		ri, err := d.applyReal(si.id, rk, r, macs[r.Addr])
		if err != nil {
			return err
		}
		if r.eligible() {
			cands = append(cands, candidate{idx: ri.idx, id: rk.Real.String(), weight: r.Weight})
		}
	}
	table, err := buildTable(s.Scheduler, cands, d.cfg.TableSize)
	if err != nil {
		return fmt.Errorf("apply service %s: %w", k, err)
	}
	timeouts := s.Timeouts.withDefaults()
	w := directorSvc{
		Id:        si.id,
		LeaseIdx:  d.st.owned[k.VIP].leaseIdx,
		Sched:     uint8(s.Scheduler),
		TableLen:  uint32(len(table)),
		PersistNs: uint64(s.Persistence),
		RefreshNs: uint64(d.refreshInterval(timeouts)),
	}
	wk := svcKeyToWire(k)
	w.Key.Addr, w.Key.Port, w.Key.Proto = wk.Addr, wk.Port, wk.Proto
	if fresh || !slices.Equal(table, si.table) {
		// The used length never exceeds the installed table: a shorter
		// length goes in before the swap, a longer one after it.
		if !fresh && len(table) < len(si.table) {
			if err := d.objs.Services.Put(si.id, w); err != nil {
				return fmt.Errorf("write service %s: %w", k, err)
			}
		}
		if err := d.writeTable(si.id, table); err != nil {
			return fmt.Errorf("apply service %s: %w", k, err)
		}
	}
	si.table = table
	si.svc = s
	si.svc.Realservers = slices.Clone(s.Realservers)
	si.timeouts = timeouts
	if err := d.objs.Services.Put(si.id, w); err != nil {
		return fmt.Errorf("write service %s: %w", k, err)
	}
	if err := d.index.put(svcIndexKey(k), si.id); err != nil {
		return fmt.Errorf("write service %s: %w", k, err)
	}
	d.st.svcs[k] = si
	d.st.byID[si.id] = si
	return nil
}

func (d *Dataplane) applyReal(svcID uint32, k RealKey, r Realserver, mac net.HardwareAddr) (*realInfo, error) {
	ri := d.st.reals[k]
	if ri == nil {
		idx, ok := d.st.realIDs.take()
		if !ok {
			return nil, fmt.Errorf("add realserver %s: more than %d realservers: %w", k.Real, maxReals, ErrInvalid)
		}
		ri = &realInfo{key: k, idx: idx}
		if err := zeroPerCPU(d.objs.RsStats, idx); err != nil {
			return nil, err
		}
		if err := d.objs.RsOpened.Put(idx, int64(0)); err != nil {
			return nil, fmt.Errorf("reset realserver %s: %w", k.Real, err)
		}
		if err := d.objs.RsAdjust.Put(idx, int64(0)); err != nil {
			return nil, fmt.Errorf("reset realserver %s: %w", k.Real, err)
		}
		delete(d.st.adjust, idx)
		d.st.reals[k] = ri
		d.st.realByIdx[idx] = ri
	}
	ri.rs = r
	if r.Method != NAT && mac != nil {
		ri.mac = mac
	}
	if err := d.objs.Reals.Put(ri.idx, realToWire(svcID, ri)); err != nil {
		return nil, fmt.Errorf("write realserver %s: %w", k.Real, err)
	}
	return ri, nil
}

func realToWire(svcID uint32, ri *realInfo) directorReal {
	w := directorReal{
		Addr:   be32(ri.rs.Addr),
		Port:   be16(ri.rs.Port),
		Method: uint8(ri.rs.Method),
		Flags:  realValid,
		SvcId:  svcID,
		Weight: ri.rs.Weight,
	}
	if !ri.rs.eligible() {
		w.Flags |= realDrain
	}
	copy(w.Mac[:], ri.mac)
	return w
}

// writeTable fills a new inner map and swaps it in, so the packet path
// never sees a half-written table.
func (d *Dataplane) writeTable(id uint32, table []uint32) error {
	m, err := ebpf.NewMap(d.inner)
	if err != nil {
		return fmt.Errorf("create table: %w", err)
	}
	if len(table) > 0 {
		keys := make([]uint32, len(table))
		for i := range keys {
			keys[i] = uint32(i)
		}
		if _, err := m.BatchUpdate(keys, table, nil); err != nil {
			m.Close()
			return fmt.Errorf("fill table: %w", err)
		}
	}
	if err := d.objs.SvcTables.Put(id, m); err != nil {
		m.Close()
		return fmt.Errorf("install table: %w", err)
	}
	if old := d.st.tables[id]; old != nil {
		old.Close()
	}
	d.st.tables[id] = m
	return nil
}

func zeroPerCPU(m *ebpf.Map, idx uint32) error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count CPUs: %w", err)
	}
	if err := m.Put(idx, make([]directorCounters, n)); err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	return nil
}

// refreshNeighbours re-reads the next-hop MACs of DR and TUN realservers
// and rewrites the ones that changed.
func (d *Dataplane) refreshNeighbours() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	macs := d.neigh.lookup(d.nextHops())
	for _, ri := range d.st.reals {
		mac := macs[ri.rs.Addr]
		if ri.rs.Method == NAT || mac == nil || slices.Equal(mac, ri.mac) {
			continue
		}
		ri.mac = mac
		si := d.st.svcs[ri.key.Service]
		if err := d.objs.Reals.Put(ri.idx, realToWire(si.id, ri)); err != nil {
			return fmt.Errorf("write realserver %s: %w", ri.key.Real, err)
		}
		d.log.Debug("next hop resolved", "addr", ri.rs.Addr, "mac", mac.String())
	}
	return nil
}

// Unresolved lists the DR and TUN realservers whose next-hop MAC is not
// known yet; their packets are dropped (drop_no_neigh) until it is.
func (d *Dataplane) Unresolved() []netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []netip.Addr
	for _, ri := range d.st.reals {
		if ri.rs.Method != NAT && ri.mac == nil && !slices.Contains(out, ri.rs.Addr) {
			out = append(out, ri.rs.Addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// SetLease lets the dataplane answer for and forward to addr until the
// deadline (converted to CLOCK_MONOTONIC, the clock the programs read).
// A zero or past deadline silences the address at once. A lease for an
// address not owned yet takes effect when Apply adds it.
func (d *Dataplane) SetLease(addr netip.Addr, deadline time.Time) error {
	if !addr.Is4() {
		return fmt.Errorf("set lease of %s: %w", addr, ErrInvalid)
	}
	ns := d.clk.mono(deadline)
	d.leaseMu.Lock()
	defer d.leaseMu.Unlock()
	if d.leaseClosed {
		return ErrClosed
	}
	d.leases[addr] = ns
	if idx, ok := d.leaseIdx[addr]; ok {
		if err := d.objs.Leases.Put(idx, ns); err != nil {
			return fmt.Errorf("write lease of %s: %w", addr, err)
		}
	}
	return nil
}
