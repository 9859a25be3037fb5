package server

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/pki"
)

func TestConnEntryConversions(t *testing.T) {
	c := dataplane.Conn{
		Key: dataplane.ConnKey{Proto: dataplane.UDP, Client: netip.MustParseAddrPort("192.0.2.100:40000"),
			VIP: netip.MustParseAddrPort("198.51.100.10:53")},
		Real:     netip.MustParseAddrPort("203.0.113.11:5353"),
		State:    dataplane.StateUDP,
		LastSeen: time.UnixMilli(1_700_000_000_123),
	}
	e := entryFromConn(c)
	want := &raftlbv1.ConnEntry{
		Protocol: raftlbv1.Protocol_PROTOCOL_UDP, ClientIp: 0xC0000264, ClientPort: 40000, Vip: 0xC633640A, Vport: 53,
		RealserverIp: 0xCB00710B, RealserverPort: 5353, State: raftlbv1.ConnectionState_CONNECTION_STATE_UDP,
		LastSeenUnixMs: 1_700_000_000_123,
	}
	if diff := cmp.Diff(want, e, protocmp.Transform()); diff != "" {
		t.Errorf("entryFromConn (-want +got):\n%s", diff)
	}
	back := connFromEntry(e)
	if back.Key != c.Key || back.Real != c.Real || back.State != c.State || !back.LastSeen.Equal(c.LastSeen) {
		t.Errorf("connFromEntry(entryFromConn(c)) = %+v, want %+v", back, c)
	}
	evs := eventsToHA([]dataplane.Event{{Type: dataplane.EventNew, Conn: c}, {Type: dataplane.EventClose, Conn: c}, {Type: 99}})
	if len(evs) != 2 || evs[0].Kind != 1 || evs[1].Kind != 4 {
		t.Errorf("eventsToHA = %v, want new and close, unknown types dropped", evs)
	}
}

// tableLog is a connTable that records installs and deletes, and refuses
// entries of unconfigured VIPs as the dataplane does.
type tableLog struct {
	mu         sync.Mutex
	configured map[netip.Addr]bool
	conns      map[dataplane.ConnKey]dataplane.Conn
}

func (l *tableLog) Connections() ([]dataplane.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []dataplane.Conn
	for _, c := range l.conns {
		out = append(out, c)
	}
	return out, nil
}

func (l *tableLog) InstallConnections(cs []dataplane.Conn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	skipped := false
	for _, c := range cs {
		if !l.configured[c.Key.VIP.Addr()] {
			skipped = true
			continue
		}
		l.conns[c.Key] = c
	}
	if skipped {
		return dataplane.ErrUnknownRealserver
	}
	return nil
}

func (l *tableLog) DeleteConnections(keys []dataplane.ConnKey) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		delete(l.conns, k)
	}
	return nil
}

func (l *tableLog) has(k dataplane.ConnKey) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.conns[k]
	return ok
}

// TestConnSyncInstaller drives the installer through the state machine: it
// installs replicated entries, leaves those of VIPs it owns alone, deletes
// what the owner deleted, and installs entries skipped for lack of
// configuration once the reconciler has caught up (catchUp waits for that).
func TestConnSyncInstaller(t *testing.T) {
	owned := netip.MustParseAddr("198.51.100.20")
	vip := netip.MustParseAddr("198.51.100.10")
	table := &tableLog{configured: map[netip.Addr]bool{owned: true}, conns: make(map[dataplane.ConnKey]dataplane.Conn)}
	var gen sync.Mutex
	reconciled := uint64(0)
	s := &connSync{dp: table, log: slog.New(slog.DiscardHandler), m: newConnSyncMetrics(nil), wake: make(chan struct{}, 1),
		owns: func(a netip.Addr) bool { return a == owned },
		gen: func() uint64 {
			gen.Lock()
			defer gen.Unlock()
			return reconciled
		}}
	f := newTestFSM(fsm.WithConnectionHook(s.hook))
	s.fsm = f.FSM
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); s.install(ctx) }()
	defer func() { cancel(); <-done }()

	f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_UpsertDirector{UpsertDirector: &raftlbv1.UpsertDirector{Director: &raftlbv1.Director{
		Id: "d1", ApiAddress: "192.0.2.1:9443", RaftAddress: "203.0.113.1:9444", FrontAddress: "192.0.2.1"}}}})
	for _, a := range []netip.Addr{vip, owned} {
		f.apply(t, &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{
			Service: tcpService(a.String(), 80), PreferredOwner: "d1"}}})
	}
	a := testConn(vip, 1)
	b := testConn(owned, 2)
	f.apply(t, &raftlbv1.Command{Origin: "d1", Op: &raftlbv1.Command_ConnectionBatch{ConnectionBatch: &raftlbv1.ConnectionBatch{
		Upserts: []*raftlbv1.ConnEntry{entryFromConn(a), entryFromConn(b)}}}})

	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	if err := s.catchUp(cctx); err != nil {
		t.Fatal(err)
	}
	if table.has(b.Key) {
		t.Errorf("installed an entry of a VIP this director owns")
	}
	if table.has(a.Key) {
		t.Errorf("installed an entry of an unconfigured VIP")
	}
	if !s.skipped.Load() {
		t.Errorf("a skipped entry was not remembered")
	}

	// The reconciler configures the VIP; the next catch-up installs the entry.
	table.mu.Lock()
	table.configured[vip] = true
	table.mu.Unlock()
	gen.Lock()
	reconciled = 5
	gen.Unlock()
	if err := s.catchUp(cctx); err != nil {
		t.Fatal(err)
	}
	if !table.has(a.Key) {
		t.Fatalf("entry skipped earlier not installed after the reconcile")
	}

	// The owner's delete reaches the table.
	f.apply(t, &raftlbv1.Command{Origin: "d1", Op: &raftlbv1.Command_ConnectionBatch{ConnectionBatch: &raftlbv1.ConnectionBatch{
		Deletes: []*raftlbv1.ConnEntry{entryFromConn(a)}}}})
	if err := s.catchUp(cctx); err != nil {
		t.Fatal(err)
	}
	if table.has(a.Key) {
		t.Errorf("entry the owner deleted is still installed")
	}
}

func TestCheckLeaseCaller(t *testing.T) {
	ctx := context.WithValue(context.Background(), identityKey{}, pki.Identity{Role: pki.RoleDirector, Name: "d1"})
	if err := checkLeaseCaller(ctx, "d1", false); err != nil {
		t.Errorf("d1 asking for d1: %v", err)
	}
	if err := checkLeaseCaller(ctx, "d2", false); err == nil {
		t.Errorf("d1 asking for d2's leases was allowed")
	}
	if err := checkLeaseCaller(ctx, "", false); err == nil {
		t.Errorf("an empty director id was allowed")
	}
	if err := checkLeaseCaller(context.Background(), "d2", true); err != nil {
		t.Errorf("insecure mode: %v", err)
	}
}
