package dataplane

import (
	"fmt"
	"net/netip"
)

// Stats sums the per-CPU counters.
func (d *Dataplane) Stats() (Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Stats{}, ErrClosed
	}
	st := Stats{
		Services:     make(map[ServiceKey]Counters),
		Realservers:  make(map[RealKey]Counters),
		Active:       make(map[RealKey]int64),
		Reasons:      make(map[Reason]uint64),
		Conns:        d.st.conns,
		ConnCapacity: d.cfg.ConnTableSize,
		ConnSlots:    d.conns.slots(),
		TableBytes:   (len(d.conns.buckets) + len(d.rnat.buckets)) * ctBucketSize,
	}
	st.SysctlRepairs = d.sysctlRepairs
	var per []directorCounters
	for k, si := range d.st.svcs {
		if err := d.objs.SvcStats.Lookup(si.id, &per); err != nil {
			return Stats{}, fmt.Errorf("read counters of %s: %w", k, err)
		}
		st.Services[k] = sumCounters(per)
	}
	for k, ri := range d.st.reals {
		if err := d.objs.RsStats.Lookup(ri.idx, &per); err != nil {
			return Stats{}, fmt.Errorf("read counters of %s: %w", k.Real, err)
		}
		st.Realservers[k] = sumCounters(per)
		var opened int64
		if err := d.objs.RsOpened.Lookup(ri.idx, &opened); err != nil {
			return Stats{}, fmt.Errorf("read active count of %s: %w", k.Real, err)
		}
		st.Active[k] = max(0, opened+d.st.adjust[ri.idx])
	}
	var vals []uint64
	for r := Reason(0); r < numReasons; r++ {
		if err := d.objs.Reasons.Lookup(uint32(r), &vals); err != nil {
			return Stats{}, fmt.Errorf("read counter %s: %w", r, err)
		}
		var sum uint64
		for _, v := range vals {
			sum += v
		}
		if sum > 0 {
			st.Reasons[r] = sum
		}
	}
	return st, nil
}

func sumCounters(per []directorCounters) Counters {
	var c Counters
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
		c.Conns += p.Conns
	}
	return c
}

// Owned lists the addresses the dataplane may answer for and whether
// each lease holds now.
func (d *Dataplane) Owned() map[netip.Addr]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := uint64(MonotonicNow())
	out := make(map[netip.Addr]bool, len(d.st.owned))
	d.leaseMu.Lock()
	defer d.leaseMu.Unlock()
	for a := range d.st.owned {
		out[a] = d.leases[a] > now
	}
	return out
}
