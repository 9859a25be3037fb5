package fsm

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// DefaultMaxConnections bounds the replicated connection table.
const DefaultMaxConnections = 1_000_000

// connKey and connVal keep a million entries affordable: a proto message per
// entry would cost several times the memory.
type connKey struct {
	vip   uint32
	vport uint16
	proto raftlbv1.Protocol
	cip   uint32
	cport uint16
}

type connVal struct {
	rip      uint32
	rport    uint16
	state    raftlbv1.ConnectionState
	lastSeen int64
}

func connKeyOf(e *raftlbv1.ConnEntry) connKey {
	return connKey{
		vip:   e.GetVip(),
		vport: uint16(e.GetVport()),
		proto: e.GetProtocol(),
		cip:   e.GetClientIp(),
		cport: uint16(e.GetClientPort()),
	}
}

func connValOf(e *raftlbv1.ConnEntry) connVal {
	return connVal{
		rip:      e.GetRealserverIp(),
		rport:    uint16(e.GetRealserverPort()),
		state:    e.GetState(),
		lastSeen: e.GetLastSeenUnixMs(),
	}
}

func connEntry(k connKey, v connVal) *raftlbv1.ConnEntry {
	return &raftlbv1.ConnEntry{
		Protocol:       k.proto,
		ClientIp:       k.cip,
		ClientPort:     uint32(k.cport),
		Vip:            k.vip,
		Vport:          uint32(k.vport),
		RealserverIp:   v.rip,
		RealserverPort: uint32(v.rport),
		State:          v.state,
		LastSeenUnixMs: v.lastSeen,
	}
}

func compareConnKey(a, b connKey) int {
	return cmp.Or(
		cmp.Compare(a.vip, b.vip),
		cmp.Compare(a.vport, b.vport),
		cmp.Compare(a.proto, b.proto),
		cmp.Compare(a.cip, b.cip),
		cmp.Compare(a.cport, b.cport),
	)
}

// sortedConns returns the table's entries in key order.
func sortedConns(m map[connKey]connVal) []*raftlbv1.ConnEntry {
	keys := sortedKeys(m, compareConnKey)
	out := make([]*raftlbv1.ConnEntry, len(keys))
	for i, k := range keys {
		out[i] = connEntry(k, m[k])
	}
	return out
}

// ConnChange is a change of the connection table, reported to the hook set
// with WithConnectionHook. Entries are the hook's to keep.
type ConnChange struct {
	// Reset means the whole table was replaced (a snapshot was restored):
	// re-read it with FSM.Connections. Upserts and Deletes are empty then.
	Reset bool
	// Flush says a FlushConnections command was applied: every director
	// empties its dataplane's table, the entries the replicated table never
	// held included. FlushVIP is the VIP it was limited to, or the zero Addr
	// for all of them. Deletes lists the replicated entries it removed.
	Flush    bool
	FlushVIP netip.Addr
	// Upserts are entries added or refreshed, in key order.
	Upserts []*raftlbv1.ConnEntry
	// Deletes are entries removed (key fields only matter), in key order.
	// Entries dropped because the table was full appear in neither list.
	// Apply Deletes before Upserts: a key may appear in both.
	Deletes []*raftlbv1.ConnEntry
	// UnixNano is the proposer's clock stamp on the command that made the
	// change (Command.unix_nano), for measuring replication lag.
	UnixNano int64
}

func (c *ConnChange) empty() bool {
	return !c.Reset && !c.Flush && len(c.Upserts) == 0 && len(c.Deletes) == 0
}

// applyConnBatch applies deletes first, then upserts, so that a batch freeing
// room makes room for its own new entries. A batch should name a key once;
// if it names one in both lists, the upsert wins.
//
// Only entries of VIPs that origin owns in this state are applied: a deposed
// owner's late batch, committed after the VIP moved, must neither overwrite
// nor delete what the new owner replicates. The check reads replicated state
// only, so every replica skips the same entries.
func (s *state) applyConnBatch(b *raftlbv1.ConnectionBatch, origin string, limit int, ch *ConnChange) {
	owned := make(map[uint32]bool)
	owns := func(vip uint32) bool {
		v, ok := owned[vip]
		if !ok {
			a := s.addresses[Uint32ToIPv4(vip)]
			v = origin != "" && a != nil && a.GetOwner() == origin
			owned[vip] = v
		}
		return v
	}
	// The hook gets the command's own (validated) entries, which nothing else
	// keeps once the command is applied: a batch is thousands of entries on
	// every director, and copies would double what each one allocates.
	for _, e := range b.GetDeletes() {
		if !owns(e.GetVip()) {
			continue
		}
		k := connKeyOf(e)
		if _, ok := s.conns[k]; ok {
			delete(s.conns, k)
			ch.Deletes = append(ch.Deletes, e)
		}
	}
	if ch.Upserts == nil {
		ch.Upserts = make([]*raftlbv1.ConnEntry, 0, len(b.GetUpserts()))
	}
	for _, e := range b.GetUpserts() {
		if !owns(e.GetVip()) {
			continue
		}
		k := connKeyOf(e)
		if _, ok := s.conns[k]; !ok && len(s.conns) >= limit {
			s.dropped++
			continue
		}
		s.conns[k] = connValOf(e)
		ch.Upserts = append(ch.Upserts, e)
	}
	sortChange(ch)
}

// deleteConns removes the entries match selects.
func (s *state) deleteConns(match func(connKey) bool, ch *ConnChange) {
	for k := range s.conns {
		if match(k) {
			delete(s.conns, k)
			ch.Deletes = append(ch.Deletes, connEntry(k, connVal{}))
		}
	}
	sortChange(ch)
}

func sortChange(ch *ConnChange) {
	byKey := func(a, b *raftlbv1.ConnEntry) int { return compareConnKey(connKeyOf(a), connKeyOf(b)) }
	slices.SortStableFunc(ch.Upserts, byKey)
	slices.SortStableFunc(ch.Deletes, byKey)
}

// IPv4ToUint32 converts an IPv4 address to ConnEntry's form (big-endian:
// 198.51.100.10 is 0xC633640A). It returns 0 for anything but IPv4.
func IPv4ToUint32(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	return binary.BigEndian.Uint32(a.AsSlice())
}

// Uint32ToIPv4 is the inverse of IPv4ToUint32.
func Uint32ToIPv4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}
