package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
)

// walkConns calls fn for every connection-table entry.
func (d *Dataplane) walkConns(fn func(k directorConnKey, v directorConn)) {
	d.conns.walk(func(k ctKey, v *ctVal) { fn(ctConnKey(k), *connVal(v)) })
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
	d.walkConns(func(k directorConnKey, v directorConn) {
		out = append(out, d.connFromWire(k, v))
	})
	return out, nil
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
	skipped, full := 0, 0
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
		v.Flags = connFlagsOf(ri.rs.Method)
		ck := connCTKey(k)
		if cur, ok := d.conns.lookup(ck); ok {
			if o := connVal(&cur); o.RsAddr == v.RsAddr && o.RsPort == v.RsPort && o.LastSeenNs >= v.LastSeenNs {
				continue
			}
		}
		prev, replaced, err := d.conns.put(ck, connCTVal(v))
		if err != nil {
			full++ // the rest may still fit: their buckets differ
			continue
		}
		old := *connVal(&prev)
		switch {
		case !replaced:
			d.adjustActive(v.RsIdx, +1)
		case old.RsIdx != v.RsIdx || !d.counts(old):
			d.adjustOwn(old, -1)
			d.adjustActive(v.RsIdx, +1)
		}
		// The replaced entry's reverse entry would outlive it.
		if replaced && old.Flags&connFlagNAT != 0 && rnatKeyFor(k, old) != rnatKeyFor(k, v) {
			d.rnat.deleteIf(rnatCTKey(rnatKeyFor(k, old)), nil)
		}
		if v.Flags&connFlagNAT != 0 {
			rv := directorRnat{Vip: k.Daddr, Vport: k.Dport, LastSeenNs: v.LastSeenNs}
			if _, _, err := d.rnat.put(rnatCTKey(rnatKeyFor(k, v)), rnatCTVal(rv)); err != nil {
				full++
			}
		}
	}
	var errs []error
	if skipped > 0 {
		errs = append(errs, fmt.Errorf("install connections: %d of %d skipped: %w", skipped, len(conns), ErrUnknownRealserver))
	}
	if full > 0 {
		errs = append(errs, fmt.Errorf("install connections: %d of %d did not fit: %w", full, len(conns), ErrTableFull))
	}
	return errors.Join(errs...)
}

// counts reports whether v is counted in its realserver slot's active
// count: a slot reused by another realserver started again from zero.
func (d *Dataplane) counts(v directorConn) bool {
	ri := d.st.realByIdx[v.RsIdx]
	if ri == nil || be32(ri.rs.Addr) != v.RsAddr || be16(ri.rs.Port) != v.RsPort {
		return false
	}
	si := d.st.svcs[ri.key.Service]
	return si != nil && si.id == v.SvcId
}

// adjustOwn moves the active count of v's realserver, if v counts there.
func (d *Dataplane) adjustOwn(v directorConn, delta int64) {
	if d.counts(v) {
		d.adjustActive(v.RsIdx, delta)
	}
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
		d.deleteConn(connKeyToWire(ck), nil)
	}
	return nil
}

// deleteConn removes k if doomed (nil: always) agrees, with its reverse
// entry, and reports whether it did.
func (d *Dataplane) deleteConn(k directorConnKey, doomed func(*directorConn) bool) (directorConn, bool) {
	var cond func(*ctVal) bool
	if doomed != nil {
		cond = func(v *ctVal) bool { return doomed(connVal(v)) }
	}
	cv, ok := d.conns.deleteIf(connCTKey(k), cond)
	if !ok {
		return directorConn{}, false
	}
	v := *connVal(&cv)
	if v.Flags&connFlagNAT != 0 {
		d.rnat.deleteIf(rnatCTKey(rnatKeyFor(k, v)), nil)
	}
	d.adjustOwn(v, -1)
	return v, true
}

// Flush removes every connection, or those of one VIP, and the matching
// persistence entries. No events are emitted.
func (d *Dataplane) Flush(vip *netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	var doomed []directorConnKey
	d.walkConns(func(k directorConnKey, _ directorConn) {
		if vip == nil || addrFrom32(k.Daddr) == *vip {
			doomed = append(doomed, k)
		}
	})
	for _, k := range doomed {
		d.deleteConn(k, nil)
	}
	// The flushed capacity is free again at once, not after a sweep.
	if err := d.reapLocked(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return d.sweepPersist(func(k directorPersistKey, _ directorPersist) bool {
		si := d.st.byID[k.SvcId]
		return vip == nil || si == nil || si.svc.VIP == *vip
	})
}

// sweepChunk bounds the entries the sweeper deletes under one hold of
// d.mu, so that Apply, Stats and the other callers never wait behind a
// mass expiry.
const sweepChunk = 256

// sweep deletes expired connections and returns their close events, then
// expires persistence entries and reverse-NAT entries left without a
// connection.
func (d *Dataplane) sweep() ([]Event, error) {
	now := uint64(MonotonicNow())
	doomed, total, err := d.sweepScan(now)
	if err != nil {
		return nil, err
	}
	var evs []Event
	for len(doomed) > 0 {
		n := min(len(doomed), sweepChunk)
		closed, err := d.sweepDelete(doomed[:n])
		evs = append(evs, closed...)
		total -= len(closed)
		if err != nil {
			return evs, err
		}
		doomed = doomed[n:]
	}
	if err := d.sweepPersistExpired(now, total); err != nil {
		return evs, err
	}
	rnats, err := d.sweepRnat(now)
	if err != nil {
		return evs, err
	}
	if err := d.setCrowded(max(total, rnats)*2 >= d.cfg.ConnTableSize); err != nil {
		return evs, err
	}
	return evs, d.reap()
}

// setCrowded tells the programs whether the tables are at least half full.
func (d *Dataplane) setCrowded(crowded bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || crowded == d.crowded {
		return nil
	}
	d.crowded = crowded
	return d.writeConfig(d.st.frontAddr)
}

// reap frees the table slots deleted since the last time, once no program
// can still hold a pointer to them.
func (d *Dataplane) reap() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	return d.reapLocked()
}

func (d *Dataplane) reapLocked() error {
	for _, t := range []*ctTable{d.conns, d.rnat} {
		if _, err := t.reap(d.rcuSync); err != nil {
			return fmt.Errorf("free deleted table slots: %w", err)
		}
	}
	return nil
}

func (d *Dataplane) sweepPersistExpired(now uint64, conns int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.st.conns = conns
	return d.sweepPersist(func(k directorPersistKey, p directorPersist) bool {
		si := d.st.byID[k.SvcId]
		return si == nil || si.svc.Persistence == 0 || now > p.LastSeenNs && time.Duration(now-p.LastSeenNs) > si.svc.Persistence
	})
}

type connKV struct {
	k directorConnKey
	v directorConn
}

// sweepScan lists the expired connections and counts the table.
func (d *Dataplane) sweepScan(now uint64) ([]connKV, int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, 0, ErrClosed
	}
	var doomed []connKV
	total := 0
	d.walkConns(func(k directorConnKey, v directorConn) {
		total++
		si := d.st.byID[v.SvcId]
		if si == nil || si.svc.ServiceKey != connKeyFromWire(k).service() {
			doomed = append(doomed, connKV{k, v}) // its service is gone
			return
		}
		if now > v.LastSeenNs && time.Duration(now-v.LastSeenNs) > si.timeouts.forState(ConnState(v.State)) {
			doomed = append(doomed, connKV{k, v})
		}
	})
	return doomed, total, nil
}

// sweepDelete deletes one chunk of expired connections under d.mu.
func (d *Dataplane) sweepDelete(doomed []connKV) ([]Event, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var evs []Event
	for _, e := range doomed {
		// The packet path may have touched it since the walk.
		cur, ok := d.deleteConn(e.k, func(cur *directorConn) bool { return cur.LastSeenNs == e.v.LastSeenNs })
		if ok {
			evs = append(evs, Event{Type: EventClose, Conn: d.connFromWire(e.k, cur)})
		}
	}
	return evs, nil
}

// sweepRnat removes reverse-NAT entries that outlived their service, or
// that have no connection and saw no packet for the service's SYN_RECV
// (TCP) or UDP timeout. Such entries come from connections that did not
// fit a full table: their replies are translated from the reverse entry
// alone, and each forwarded packet refreshes it. An entry whose
// connection lives is left to deleteConn. It returns about how many
// entries remain.
func (d *Dataplane) sweepRnat(now uint64) (int, error) {
	idle, total, err := d.scanRnat(now)
	if err != nil {
		return 0, err
	}
	total -= len(idle)
	for len(idle) > 0 {
		n := min(len(idle), sweepChunk)
		if err := d.expireRnat(now, idle[:n]); err != nil {
			return total, err
		}
		idle = idle[n:]
	}
	return total, nil
}

type rnatKV struct {
	k directorRnatKey
	v directorRnat
}

// scanRnat lists the reverse-NAT entries idle past their timeout.
func (d *Dataplane) scanRnat(now uint64) ([]rnatKV, int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, 0, ErrClosed
	}
	var idle []rnatKV
	total := 0
	d.rnat.walk(func(ck ctKey, cv *ctVal) {
		total++
		k, v := ctRnatKey(ck), *rnatVal(cv)
		si := d.st.svcs[ServiceKey{VIP: addrFrom32(v.Vip), Port: port16(v.Vport), Proto: Proto(k.Proto)}]
		timeout := time.Duration(0)
		if si != nil {
			timeout = si.timeouts.TCPSynRecv
			if Proto(k.Proto) == UDP {
				timeout = si.timeouts.UDP
			}
		}
		if now > v.LastSeenNs && time.Duration(now-v.LastSeenNs) > timeout {
			idle = append(idle, rnatKV{k, v})
		}
	})
	return idle, total, nil
}

// expireRnat deletes one chunk of idle reverse-NAT entries that have no
// connection, under d.mu.
func (d *Dataplane) expireRnat(now uint64, idle []rnatKV) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	for _, e := range idle {
		ck := directorConnKey{Saddr: e.k.Daddr, Daddr: e.v.Vip, Sport: e.k.Dport, Dport: e.v.Vport, Proto: e.k.Proto}
		if cv, ok := d.conns.lookup(connCTKey(ck)); ok {
			if c := connVal(&cv); c.Flags&connFlagNAT != 0 && rnatKeyFor(ck, *c) == e.k {
				// Replies are idle, the connection is not: look again
				// after another timeout rather than every sweep.
				d.rnat.update(rnatCTKey(e.k), func(v *ctVal) { rnatVal(v).LastSeenNs = now })
				continue
			}
		}
		// Unless a packet used it since the walk.
		d.rnat.deleteIf(rnatCTKey(e.k), func(v *ctVal) bool { return rnatVal(v).LastSeenNs == e.v.LastSeenNs })
	}
	return nil
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
