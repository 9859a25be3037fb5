package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/ha"
)

// memDataplane is a director's packet path in memory: leases and a connection
// table, with the time each entry was installed, and a hook to inject the
// connection events the programs would report.
type memDataplane struct {
	mu        sync.Mutex
	leases    map[netip.Addr]time.Time
	conns     map[dataplane.ConnKey]dataplane.Conn
	installed map[dataplane.ConnKey]time.Time
	onEvent   func([]dataplane.Event)
	changed   chan struct{}
}

func newMemDataplane() *memDataplane {
	return &memDataplane{leases: make(map[netip.Addr]time.Time), conns: make(map[dataplane.ConnKey]dataplane.Conn),
		installed: make(map[dataplane.ConnKey]time.Time), changed: make(chan struct{})}
}

func (m *memDataplane) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *memDataplane) Apply(dataplane.State) error { return nil }

func (m *memDataplane) SetLease(a netip.Addr, deadline time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leases[a] = deadline
	return nil
}

// owns reports whether the lease on a is valid now.
func (m *memDataplane) owns(a netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return time.Now().Before(m.leases[a])
}

func (m *memDataplane) Connections() ([]dataplane.Conn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]dataplane.Conn, 0, len(m.conns))
	for _, c := range m.conns {
		out = append(out, c)
	}
	return out, nil
}

func (m *memDataplane) InstallConnections(cs []dataplane.Conn) error {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cs {
		m.conns[c.Key] = c
		if _, ok := m.installed[c.Key]; !ok {
			m.installed[c.Key] = now
		}
	}
	m.notifyLocked()
	return nil
}

func (m *memDataplane) DeleteConnections(keys []dataplane.ConnKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range keys {
		delete(m.conns, k)
	}
	m.notifyLocked()
	return nil
}

func (m *memDataplane) Flush(*netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.conns)
	m.notifyLocked()
	return nil
}

func (m *memDataplane) Stats() (dataplane.Stats, error) { return dataplane.Stats{}, nil }

func (m *memDataplane) Run(ctx context.Context, onEvent func([]dataplane.Event)) error {
	m.mu.Lock()
	m.onEvent = onEvent
	m.mu.Unlock()
	<-ctx.Done()
	return nil
}

// inject changes the table as the programs (and the sweeper) would and hands
// the events to the director as the ring buffer would, once Run has started;
// it reports false before that.
func (m *memDataplane) inject(evs []dataplane.Event) bool {
	m.mu.Lock()
	fn := m.onEvent
	if fn != nil {
		for _, ev := range evs {
			if ev.Type == dataplane.EventClose {
				delete(m.conns, ev.Conn.Key)
			} else {
				m.conns[ev.Conn.Key] = ev.Conn
			}
		}
	}
	m.mu.Unlock()
	if fn == nil {
		return false
	}
	fn(evs)
	return true
}

// installedAt returns when each key was installed (zero if not yet).
func (m *memDataplane) installedAt(keys []dataplane.ConnKey) []time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]time.Time, len(keys))
	for i, k := range keys {
		out[i] = m.installed[k]
	}
	return out
}

// missing returns the keys the table lacks.
func (m *memDataplane) missing(keys []dataplane.ConnKey) []dataplane.ConnKey {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []dataplane.ConnKey
	for _, k := range keys {
		if _, ok := m.conns[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}

// installedCount is how many distinct entries were ever installed.
func (m *memDataplane) installedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.installed)
}

func (m *memDataplane) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

// haCluster is a 3-voter in-process cluster: d1 and d2 full directors with
// memory dataplanes, d3 a witness.
func haCluster(t testing.TB) (*testCluster, map[string]*memDataplane) {
	t.Helper()
	c := newTestCluster(t, 3)
	dps := map[string]*memDataplane{}
	for _, n := range c.nodes {
		n.cfg.LeaseDuration = 500 * time.Millisecond
		if n.id == "d3" {
			n.cfg.Witness = true
			continue
		}
		dp := newMemDataplane()
		dps[n.id] = dp
		n.opts = append(n.opts, WithDataplane(NewPacketPath(dp, nil)))
	}
	c.startAll()
	c.waitLeader()
	return c, dps
}

// ownedBy waits until director id's dataplane holds a valid lease on vip.
func ownedBy(t testing.TB, dps map[string]*memDataplane, id string, vip netip.Addr) {
	t.Helper()
	waitFor(t, 20*time.Second, id+" holds a lease on "+vip.String(), func() error {
		for other, dp := range dps {
			if other != id && dp.owns(vip) {
				return fmt.Errorf("%s holds it", other)
			}
		}
		if !dps[id].owns(vip) {
			return fmt.Errorf("%s has no lease", id)
		}
		return nil
	})
}

func testConn(vip netip.Addr, i int) dataplane.Conn {
	client := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i/60000)})
	return dataplane.Conn{
		Key: dataplane.ConnKey{Proto: dataplane.TCP, Client: netip.AddrPortFrom(client, uint16(1024+i%60000)),
			VIP: netip.AddrPortFrom(vip, 80)},
		Real:     netip.AddrPortFrom(netip.MustParseAddr("192.0.2.11"), 80),
		Method:   dataplane.DR,
		State:    dataplane.StateEstablished,
		LastSeen: time.Now(),
	}
}

// TestHAConnSyncAndFailover runs the HA wiring end to end in one process:
// the preferred owner gets the lease, its connection events reach the
// standby's table, a graceful move hands the VIP over, and when the owner
// stops the standby takes over once the lease has run out.
func TestHAConnSyncAndFailover(t *testing.T) {
	c, dps := haCluster(t)
	vip := netip.MustParseAddr("198.51.100.10")
	lb, _ := c.admin(c.nodes[2])
	svc := tcpService(vip.String(), 80)
	if _, err := lb.CreateService(callCtx(t), &raftlbv1.CreateServiceRequest{Service: svc, PreferredOwner: "d1"}); err != nil {
		t.Fatal(err)
	}
	ownedBy(t, dps, "d1", vip)

	var keys []dataplane.ConnKey
	var evs []dataplane.Event
	for i := range 100 {
		cn := testConn(vip, i)
		keys = append(keys, cn.Key)
		evs = append(evs, dataplane.Event{Type: dataplane.EventNew, Conn: cn})
	}
	waitFor(t, 10*time.Second, "d1's dataplane loop runs", func() error {
		if !dps["d1"].inject(evs) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	waitFor(t, 10*time.Second, "d2 installs d1's connections", func() error {
		if n := dps["d2"].count(); n != len(keys) {
			return fmt.Errorf("%d of %d installed", n, len(keys))
		}
		return nil
	})
	// The owner's close events delete the entries everywhere.
	closed := make([]dataplane.Event, 10)
	for i := range closed {
		closed[i] = dataplane.Event{Type: dataplane.EventClose, Conn: testConn(vip, i)}
	}
	dps["d1"].inject(closed)
	waitFor(t, 10*time.Second, "d2 drops what d1 dropped", func() error {
		if n := dps["d2"].count(); n != len(keys)-len(closed) {
			return fmt.Errorf("%d entries", n)
		}
		return nil
	})
	// A standby's own events for a VIP it does not own are not replicated.
	dps["d2"].inject([]dataplane.Event{{Type: dataplane.EventClose, Conn: testConn(vip, 50)}})

	_, cl := c.admin(c.nodes[1])
	if _, err := cl.MoveVip(callCtx(t), &raftlbv1.MoveVipRequest{Vip: vip.String(), To: "d2"}); err != nil {
		t.Fatalf("move vip: %v", err)
	}
	ownedBy(t, dps, "d2", vip)
	if n := dps["d1"].count(); n != len(keys)-len(closed) {
		t.Errorf("after the move d1 holds %d entries, want %d (the standby's event must not have been replicated)", n, len(keys)-len(closed))
	}

	// d2 stops; d1 takes over once d2's lease has surely run out.
	c.stop(c.nodes[1])
	ownedBy(t, dps, "d1", vip)
	if missing := dps["d1"].missing(keys[len(closed):]); len(missing) > 0 {
		t.Fatalf("d1 lacks %d connections after the failover, e.g. %v", len(missing), missing[0])
	}
}

// TestLocalProposerTerm: the reassigner's proposals commit only in the term
// whose lease bookkeeping they rest on, and only once this node's leadership
// of that term is established.
func TestLocalProposerTerm(t *testing.T) {
	c := newTestCluster(t, 1)
	c.startAll()
	leader, term := c.waitLeader()
	d := leader.d
	waitFor(t, 10*time.Second, "leadership established", func() error {
		if got := d.barrierTerm.Load(); got != term {
			return fmt.Errorf("established term %d, want %d", got, term)
		}
		return nil
	})
	cmd := func() *raftlbv1.Command {
		return &raftlbv1.Command{Op: &raftlbv1.Command_UpsertDirector{
			UpsertDirector: &raftlbv1.UpsertDirector{Director: &raftlbv1.Director{Id: "d9", ApiAddress: "127.0.0.1:1",
				RaftAddress: "127.0.0.1:2", FrontAddress: "192.0.2.9"}}}}
	}
	p := localProposer{d}
	for _, stale := range []uint64{0, term - 1, term + 1} {
		if _, err := p.ProposeInTerm(callCtx(t), stale, cmd()); !errors.Is(err, ha.ErrNotLeader) {
			t.Fatalf("propose in term %d while leading %d: %v, want ha.ErrNotLeader", stale, term, err)
		}
	}
	if _, err := p.ProposeInTerm(callCtx(t), term, cmd()); err != nil {
		t.Fatalf("propose in the current term: %v", err)
	}
}
