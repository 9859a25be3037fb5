package fsm

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func TestIPv4Uint32(t *testing.T) {
	a := netip.MustParseAddr("198.51.100.10")
	if got := IPv4ToUint32(a); got != 0xC633640A {
		t.Errorf("IPv4ToUint32 = %#x", got)
	}
	if got := Uint32ToIPv4(0xC633640A); got != a {
		t.Errorf("Uint32ToIPv4 = %v", got)
	}
}

func TestConnections(t *testing.T) {
	var changes []ConnChange
	f := newNode(t, WithMaxConnections(3), WithConnectionHook(func(c ConnChange) { changes = append(changes, c) }))
	f.mustApply(t, upsertDirector("d1", "192.0.2.1", false))
	f.mustApply(t, createSvc(vip1, 80, ""))
	f.mustApply(t, createSvc(vip2, 80, ""))
	c1 := conn(vip1, 80, "192.0.2.100", 1, rs1)
	c2 := conn(vip1, 80, "192.0.2.100", 2, rs1)
	c3 := conn(vip2, 80, "192.0.2.100", 3, rs2)
	c4 := conn(vip2, 80, "192.0.2.100", 4, rs2)

	f.mustApply(t, connBatchFrom("d1", []*raftlbv1.ConnEntry{c3, c1, c2, c4}, nil))
	if got := f.Counts(); got.Connections != 3 || got.ConnectionsDropped != 1 {
		t.Errorf("full table: counts %+v, want 3 entries and 1 dropped", got)
	}
	if diff := cmp.Diff([]*raftlbv1.ConnEntry{c1, c2, c3}, f.Connections(), protocmp.Transform()); diff != "" {
		t.Errorf("connections (-want +got):\n%s", diff)
	}

	// A refresh of a known entry is never dropped; deletes make room first.
	c1b := conn(vip1, 80, "192.0.2.100", 1, rs1)
	c1b.State, c1b.LastSeenUnixMs = raftlbv1.ConnectionState_CONNECTION_STATE_FIN_WAIT, 2000
	f.mustApply(t, connBatchFrom("d1", []*raftlbv1.ConnEntry{c1b, c4}, []*raftlbv1.ConnEntry{{Protocol: c2.Protocol, ClientIp: c2.ClientIp, ClientPort: 2, Vip: c2.Vip, Vport: 80}}))
	if diff := cmp.Diff([]*raftlbv1.ConnEntry{c1b, c3, c4}, f.Connections(), protocmp.Transform()); diff != "" {
		t.Errorf("connections (-want +got):\n%s", diff)
	}

	f.mustApply(t, deleteSvc(vip1, 80))
	if diff := cmp.Diff([]*raftlbv1.ConnEntry{c3, c4}, f.Connections(), protocmp.Transform()); diff != "" {
		t.Errorf("after deleting the service (-want +got):\n%s", diff)
	}
	f.mustApply(t, &raftlbv1.Command{Op: &raftlbv1.Command_FlushConnections{FlushConnections: &raftlbv1.FlushConnectionsRequest{Vip: vip1}}})
	if got := len(f.Connections()); got != 2 {
		t.Errorf("flushing another VIP removed entries: %d left", got)
	}
	f.mustApply(t, &raftlbv1.Command{Op: &raftlbv1.Command_FlushConnections{FlushConnections: &raftlbv1.FlushConnectionsRequest{Vip: vip2}}})
	if got := len(f.Connections()); got != 0 {
		t.Errorf("flush left %d entries", got)
	}
	restore(t, f.FSM, snapshotBytes(t, f.FSM))

	key := func(e *raftlbv1.ConnEntry) *raftlbv1.ConnEntry {
		return &raftlbv1.ConnEntry{Protocol: e.Protocol, ClientIp: e.ClientIp, ClientPort: e.ClientPort, Vip: e.Vip, Vport: e.Vport}
	}
	want := []ConnChange{
		{Upserts: []*raftlbv1.ConnEntry{c1, c2, c3}},
		{Upserts: []*raftlbv1.ConnEntry{c1b, c4}, Deletes: []*raftlbv1.ConnEntry{key(c2)}},
		{Deletes: []*raftlbv1.ConnEntry{key(c1)}},
		{Flush: true, FlushVIP: netip.MustParseAddr(vip1)}, // a flush is reported even when it removed nothing replicated
		{Flush: true, FlushVIP: netip.MustParseAddr(vip2), Deletes: []*raftlbv1.ConnEntry{key(c3), key(c4)}},
		{Reset: true},
	}
	if diff := cmp.Diff(want, changes, protocmp.Transform(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("hook saw (-want +got):\n%s", diff)
	}
}

// TestConnectionHookBatch checks that ApplyBatch reports each entry's change
// separately, so an upsert followed by a delete stays in that order.
func TestConnectionHookBatch(t *testing.T) {
	var changes []ConnChange
	f := New(nil, WithConnectionHook(func(c ConnChange) { changes = append(changes, c) }))
	c1 := conn(vip1, 80, "192.0.2.100", 1, rs1)
	logs := []*raft.Log{
		{Index: 1, Type: raft.LogCommand, Data: mustMarshal(t, upsertDirector("d1", "192.0.2.1", false))},
		{Index: 2, Type: raft.LogCommand, Data: mustMarshal(t, createSvc(vip1, 80, ""))},
		{Index: 3, Type: raft.LogCommand, Data: mustMarshal(t, connBatchFrom("d1", []*raftlbv1.ConnEntry{c1}, nil))},
		{Index: 4, Type: raft.LogCommand, Data: mustMarshal(t, connBatchFrom("d1", nil, []*raftlbv1.ConnEntry{c1}))},
	}
	f.ApplyBatch(logs)
	if len(changes) != 2 || len(changes[0].Upserts) != 1 || len(changes[1].Deletes) != 1 {
		t.Errorf("hook saw %v, want an upsert then a delete", changes)
	}
	if n := f.Counts().Connections; n != 0 {
		t.Errorf("%d connections left", n)
	}
}

// TestConnectionHookBeforeWatchers checks that the hooks have seen a batch's
// connections before the watchers of Changed wake to the assignment applied
// with them: a new owner that wakes to its assignment must find the flushed
// connections of its predecessor already handed to the installer.
func TestConnectionHookBeforeWatchers(t *testing.T) {
	var f *FSM
	var changed <-chan struct{}
	var hooked, early int
	f = New(nil, WithConnectionHook(func(ConnChange) {
		hooked++
		select {
		case <-changed:
			early++
		default:
		}
	}))
	c1 := conn(vip1, 80, "192.0.2.100", 1, rs1)
	f.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogCommand, Data: mustMarshal(t, upsertDirector("d1", "192.0.2.1", false))},
		{Index: 2, Type: raft.LogCommand, Data: mustMarshal(t, upsertDirector("d2", "192.0.2.2", false))},
		{Index: 3, Type: raft.LogCommand, Data: mustMarshal(t, createSvc(vip1, 80, "d1"))},
	})
	epoch := f.Addresses()[0].GetEpoch()
	changed = f.Changed()
	f.ApplyBatch([]*raft.Log{
		{Index: 4, Type: raft.LogCommand, Data: mustMarshal(t, connBatchFrom("d1", []*raftlbv1.ConnEntry{c1}, nil))},
		{Index: 5, Type: raft.LogCommand, Data: mustMarshal(t, &raftlbv1.Command{Op: &raftlbv1.Command_AssignAddresses{
			AssignAddresses: &raftlbv1.AssignAddresses{Addresses: []*raftlbv1.Address{{Address: vip1, Owner: "d2", Epoch: epoch + 1}}}}})},
	})
	changed = f.Changed()
	f.Apply(&raft.Log{Index: 6, Type: raft.LogCommand, Data: mustMarshal(t, deleteSvc(vip1, 80))})
	if hooked != 2 || early != 0 {
		t.Fatalf("hooks ran %d times, %d of them after the watchers woke; want 2 and 0", hooked, early)
	}
	select {
	case <-changed:
	default:
		t.Fatal("watchers not woken")
	}
}

// TestConnectionBatchOrigin checks that a batch changes only the entries of
// VIPs its proposer owns: after a VIP moves, the old owner's late batch
// neither overwrites nor deletes the new owner's entries.
func TestConnectionBatchOrigin(t *testing.T) {
	var changes []ConnChange
	f := newNode(t, WithConnectionHook(func(c ConnChange) { changes = append(changes, c) }))
	f.mustApply(t, upsertDirector("d1", "192.0.2.1", false))
	f.mustApply(t, upsertDirector("d2", "192.0.2.2", false))
	f.mustApply(t, createSvc(vip1, 80, "d1"))
	f.mustApply(t, createSvc(vip2, 80, "d2"))
	c1 := conn(vip1, 80, "192.0.2.100", 1, rs1)
	c2 := conn(vip2, 80, "192.0.2.100", 2, rs2)

	f.mustApply(t, connBatchFrom("d1", []*raftlbv1.ConnEntry{c1, c2}, nil))
	if diff := cmp.Diff([]*raftlbv1.ConnEntry{c1}, f.Connections(), protocmp.Transform()); diff != "" {
		t.Errorf("d1 wrote only its own VIP's entry (-want +got):\n%s", diff)
	}
	f.mustApply(t, connBatch([]*raftlbv1.ConnEntry{c2}, nil))
	if n := len(f.Connections()); n != 1 {
		t.Errorf("a batch without an origin changed the table: %d entries", n)
	}

	epoch := f.Addresses()[0].GetEpoch()
	f.mustApply(t, assign(vip1, "d2", epoch+1))
	moved := conn(vip1, 80, "192.0.2.100", 1, rs2)
	moved.LastSeenUnixMs = 3000
	f.mustApply(t, connBatchFrom("d2", []*raftlbv1.ConnEntry{moved}, nil))
	stale := conn(vip1, 80, "192.0.2.100", 1, rs1)
	stale.LastSeenUnixMs = 4000
	f.mustApply(t, connBatchFrom("d1", []*raftlbv1.ConnEntry{stale}, []*raftlbv1.ConnEntry{moved}))
	if diff := cmp.Diff([]*raftlbv1.ConnEntry{moved}, f.Connections(), protocmp.Transform()); diff != "" {
		t.Errorf("after the move (-want +got):\n%s", diff)
	}
	if len(changes) != 2 {
		t.Errorf("hook saw %d changes, want 2 (one per applied batch)", len(changes))
	}
}
