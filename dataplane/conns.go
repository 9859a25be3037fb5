package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
)

// batch is how many entries one map syscall moves.
const batch = 4096

// walkConns calls fn for every connection-table entry, in batches.
func (d *Dataplane) walkConns(fn func(k directorConnKey, v directorConn)) error {
	keys := make([]directorConnKey, batch)
	vals := make([]directorConn, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := d.objs.Conns.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read connection table: %w", err)
		}
	}
}

func (d *Dataplane) connFromWire(k directorConnKey, v directorConn) Conn {
	c := connFromWire(k, v, d.clk)
	if ri := d.st.realByIdx[v.RsIdx]; ri != nil && ri.key.Real == c.Real {
		c.Method = ri.rs.Method
	}
	return c
}

// Connections returns the connection table.
func (d *Dataplane) Connections() ([]Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var out []Conn
	err := d.walkConns(func(k directorConnKey, v directorConn) {
		out = append(out, d.connFromWire(k, v))
	})
	return out, err
}

// InstallConnections writes replicated connections into the table, so
// this director forwards them to the same realservers when it takes over.
// An entry already present for the same realserver keeps the later
// timestamp. Connections of services or realservers not configured here
// are skipped and reported with ErrUnknownRealserver.
func (d *Dataplane) InstallConnections(conns []Conn) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	skipped := 0
	for _, c := range conns {
		si := d.st.svcs[c.Key.service()]
		var ri *realInfo
		if si != nil {
			ri = d.st.reals[RealKey{c.Key.service(), c.Real}]
		}
		if ri == nil {
			skipped++
			continue
		}
		k := connKeyToWire(c.Key)
		v := directorConn{
			LastSeenNs: d.clk.mono(c.LastSeen),
			RsIdx:      ri.idx,
			RsAddr:     be32(c.Real.Addr()),
			RsPort:     be16(c.Real.Port()),
			State:      uint8(c.State),
			SvcId:      si.id,
		}
		v.EventNs = v.LastSeenNs
		if ri.rs.Method == NAT {
			v.Flags |= connFlagNAT
		}
		var old directorConn
		err := d.objs.Conns.Lookup(k, &old)
		switch {
		case err == nil && old.RsAddr == v.RsAddr && old.RsPort == v.RsPort && old.LastSeenNs >= v.LastSeenNs:
			continue
		case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
			return fmt.Errorf("install connection %s: %w", c.Key, err)
		}
		if err := d.objs.Conns.Put(k, v); err != nil {
			return fmt.Errorf("install connection %s: %w", c.Key, err)
		}
		if v.Flags&connFlagNAT != 0 {
			if err := d.objs.Rnat.Put(rnatKeyFor(k, v), directorRnat{Vip: k.Daddr, Vport: k.Dport}); err != nil {
				return fmt.Errorf("install reverse NAT of %s: %w", c.Key, err)
			}
		}
		switch {
		case err != nil: // a new entry
			d.adjustActive(v.RsIdx, +1)
		case old.RsIdx != v.RsIdx:
			d.adjustActive(old.RsIdx, -1)
			d.adjustActive(v.RsIdx, +1)
		}
	}
	if skipped > 0 {
		return fmt.Errorf("install connections: %d of %d skipped: %w", skipped, len(conns), ErrUnknownRealserver)
	}
	return nil
}

// adjustActive moves a realserver's active-connection count by the
// connections Go adds or removes behind the programs' backs.
func (d *Dataplane) adjustActive(idx uint32, delta int64) {
	d.st.adjust[idx] += delta
	if err := d.objs.RsAdjust.Put(idx, d.st.adjust[idx]); err != nil {
		d.log.Warn("write active count", "err", err)
	}
}

// DeleteConnections removes entries (e.g. ones the owner dropped). No
// events are emitted for them.
func (d *Dataplane) DeleteConnections(keys []ConnKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	for _, ck := range keys {
		k := connKeyToWire(ck)
		var v directorConn
		if err := d.objs.Conns.Lookup(k, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return fmt.Errorf("delete connection %s: %w", ck, err)
		}
		if err := d.deleteConn(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (d *Dataplane) deleteConn(k directorConnKey, v directorConn) error {
	if err := d.objs.Conns.Delete(k); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("delete connection: %w", err)
	}
	if v.Flags&connFlagNAT != 0 {
		if err := d.objs.Rnat.Delete(rnatKeyFor(k, v)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete reverse NAT entry: %w", err)
		}
	}
	d.adjustActive(v.RsIdx, -1)
	return nil
}

// Flush removes every connection, or those of one VIP, and the matching
// persistence entries. No events are emitted.
func (d *Dataplane) Flush(vip *netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	type kv struct {
		k directorConnKey
		v directorConn
	}
	var doomed []kv
	err := d.walkConns(func(k directorConnKey, v directorConn) {
		if vip == nil || addrFrom32(k.Daddr) == *vip {
			doomed = append(doomed, kv{k, v})
		}
	})
	if err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	for _, e := range doomed {
		if err := d.deleteConn(e.k, e.v); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
	}
	return d.sweepPersist(func(k directorPersistKey, _ directorPersist) bool {
		si := d.st.byID[k.SvcId]
		return vip == nil || si == nil || si.svc.VIP == *vip
	})
}

// sweep deletes expired connections and returns their close events.
func (d *Dataplane) sweep() ([]Event, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	now := uint64(MonotonicNow())
	type kv struct {
		k directorConnKey
		v directorConn
	}
	var doomed []kv
	total := 0
	err := d.walkConns(func(k directorConnKey, v directorConn) {
		total++
		si := d.st.byID[v.SvcId]
		if si == nil || si.svc.ServiceKey != connKeyFromWire(k).service() {
			doomed = append(doomed, kv{k, v}) // its service is gone
			return
		}
		if now > v.LastSeenNs && time.Duration(now-v.LastSeenNs) > si.timeouts.forState(ConnState(v.State)) {
			doomed = append(doomed, kv{k, v})
		}
	})
	if err != nil {
		return nil, err
	}
	var evs []Event
	for _, e := range doomed {
		// The packet path may have touched it since the walk.
		var cur directorConn
		if err := d.objs.Conns.Lookup(e.k, &cur); err != nil || cur.LastSeenNs != e.v.LastSeenNs {
			continue
		}
		if err := d.deleteConn(e.k, cur); err != nil {
			return evs, err
		}
		total--
		c := d.connFromWire(e.k, cur)
		evs = append(evs, Event{Type: EventClose, Conn: c})
	}
	d.st.conns = total
	err = d.sweepPersist(func(k directorPersistKey, p directorPersist) bool {
		si := d.st.byID[k.SvcId]
		return si == nil || si.svc.Persistence == 0 || now > p.LastSeenNs && time.Duration(now-p.LastSeenNs) > si.svc.Persistence
	})
	return evs, err
}

func (d *Dataplane) sweepPersist(doomed func(directorPersistKey, directorPersist) bool) error {
	var (
		k    directorPersistKey
		v    directorPersist
		dead []directorPersistKey
	)
	it := d.objs.Persist.Iterate()
	for it.Next(&k, &v) {
		if doomed(k, v) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read persistence table: %w", err)
	}
	for _, k := range dead {
		if err := d.objs.Persist.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete persistence entry: %w", err)
		}
	}
	return nil
}
