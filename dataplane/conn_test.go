package dataplane

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

var addrCmp = cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{})

func connByKey(t *testing.T, d *Dataplane, k ConnKey) (Conn, bool) {
	t.Helper()
	cs, err := d.Connections()
	if err != nil {
		t.Fatalf("connections: %v", err)
	}
	for _, c := range cs {
		if c.Key == k {
			return c, true
		}
	}
	return Conn{}, false
}

func TestConnStates(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 3))}})
	grantLease(t, d, vip)
	key := ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, 40000), VIP: netip.AddrPortFrom(vip, 80)}
	steps := []struct {
		flags uint8
		want  ConnState
	}{
		{pkt.SYN, StateSynRecv},
		{pkt.SYN, StateSynRecv}, // retransmit
		{pkt.ACK, StateEstablished},
		{pkt.ACK | pkt.PSH, StateEstablished},
		{pkt.FIN | pkt.ACK, StateFinWait},
		{pkt.ACK, StateFinWait},
		{pkt.RST, StateClose},
		{pkt.ACK, StateClose},
		{pkt.SYN, StateSynRecv}, // port reuse
		{pkt.ACK, StateEstablished},
		{pkt.RST | pkt.ACK, StateClose},
	}
	var first int
	for i, s := range steps {
		v, out := run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, s.flags, nil))
		if v != xdpTX {
			t.Fatalf("step %d: verdict %d", i, v)
		}
		if i == 0 {
			first = rsOf(out)
		} else if rsOf(out) != first {
			t.Fatalf("step %d: went to rs%d, connection is on rs%d", i, rsOf(out), first)
		}
		c, ok := connByKey(t, d, key)
		if !ok {
			t.Fatalf("step %d: no connection", i)
		}
		if c.State != s.want {
			t.Errorf("step %d (flags %#x): state %s, want %s", i, s.flags, c.State, s.want)
		}
	}
	c, _ := connByKey(t, d, key)
	want := Conn{Key: key, Real: netip.AddrPortFrom(rsFront(first), 80), Method: DR, State: StateClose}
	if diff := cmp.Diff(want, c, cmpopts.IgnoreFields(Conn{}, "LastSeen"), addrCmp); diff != "" {
		t.Errorf("connection (-want +got):\n%s", diff)
	}
	if age := time.Since(c.LastSeen); age < -time.Second || age > time.Second {
		t.Errorf("last seen %v ago", age)
	}
}

// Existing connections keep their realserver through drains and set
// changes; a removed realserver's connections are rescheduled.
func TestDrainAndRemove(t *testing.T) {
	d := newTestDataplane(t, Config{})
	rs := reals(DR, 80, 3)
	mustApply(t, d, State{Services: []Service{service(MH, rs)}})
	grantLease(t, d, vip)

	// One connection per realserver.
	owner := map[int]uint16{}
	for p := uint16(20000); len(owner) < 3 && p < 21000; p++ {
		_, out := run(t, d.objs.XdpFront, tcpFrame(client, p, vip, 80, pkt.SYN, nil))
		if _, ok := owner[rsOf(out)]; !ok {
			owner[rsOf(out)] = p
		}
	}
	if len(owner) != 3 {
		t.Fatalf("connections reached %d realservers", len(owner))
	}
	check := func(step string, want map[int]int) {
		t.Helper()
		for i := 1; i <= 3; i++ {
			_, out := run(t, d.objs.XdpFront, tcpFrame(client, owner[i], vip, 80, pkt.ACK, nil))
			if got := rsOf(out); got != want[i] {
				t.Errorf("%s: connection of rs%d went to rs%d, want rs%d", step, i, got, want[i])
			}
		}
	}
	newConns := func(step string) map[int]int {
		t.Helper()
		n := map[int]int{}
		for p := uint16(30000); p < 30300; p++ {
			_, out := run(t, d.objs.XdpFront, tcpFrame(netip.MustParseAddr("192.0.2.101"), p, vip, 80, pkt.SYN, nil))
			n[rsOf(out)]++
		}
		return n
	}

	rs[1].Drain = true
	mustApply(t, d, State{Services: []Service{service(MH, rs)}})
	check("rs2 drained", map[int]int{1: 1, 2: 2, 3: 3})
	if n := newConns("drained"); n[2] != 0 {
		t.Errorf("drained rs2 got %d new connections", n[2])
	}
	rs[1].Drain = false
	rs[2].Weight = 0
	mustApply(t, d, State{Services: []Service{service(MH, rs)}})
	check("rs3 weight 0", map[int]int{1: 1, 2: 2, 3: 3})

	// Adding a realserver moves no existing connection.
	rs[2].Weight = 1
	rs4 := Realserver{Addr: netip.MustParseAddr("192.0.2.14"), Port: 80, Weight: 1, Method: DR}
	mustApply(t, d, State{Services: []Service{service(MH, append(rs, rs4))}})
	check("rs4 added", map[int]int{1: 1, 2: 2, 3: 3})

	// rs1 removed: its connection is rescheduled onto a live one.
	before := counter(t, d, ReasonConnRescheduled)
	mustApply(t, d, State{Services: []Service{service(MH, rs[1:])}})
	_, out := run(t, d.objs.XdpFront, tcpFrame(client, owner[1], vip, 80, pkt.ACK, nil))
	if got := rsOf(out); got != 2 && got != 3 {
		t.Errorf("connection of removed rs1 went to rs%d", got)
	}
	if got := counter(t, d, ReasonConnRescheduled); got != before+1 {
		t.Errorf("rescheduled counter %d, want %d", got, before+1)
	}
	if n := newConns("removed"); n[1] != 0 {
		t.Errorf("removed rs1 got %d new connections", n[1])
	}
	check("after removal", map[int]int{1: rsOf(out), 2: 2, 3: 3})

	// No eligible realserver: new connections are dropped, old ones live.
	for i := range rs {
		rs[i].Unhealthy = true
	}
	mustApply(t, d, State{Services: []Service{service(MH, rs[1:])}})
	if v, _ := run(t, d.objs.XdpFront, tcpFrame(client, 50000, vip, 80, pkt.SYN, nil)); v != xdpDrop {
		t.Errorf("no eligible realserver: verdict %d, want drop", v)
	}
	check("all unhealthy", map[int]int{1: rsOf(out), 2: 2, 3: 3})
}

func TestSchedulers(t *testing.T) {
	const n = 6000
	weighted := func(m Method) []Realserver {
		rs := reals(m, 80, 3)
		for i := range rs {
			rs[i].Weight = uint32(i + 1)
		}
		return rs
	}
	for _, tc := range []struct {
		sched Scheduler
		rs    []Realserver
		want  [4]float64 // share per realserver 1..3
		tol   float64
	}{
		{MH, reals(DR, 80, 3), [4]float64{0, 1. / 3, 1. / 3, 1. / 3}, 0.03},
		{MH, weighted(DR), [4]float64{0, 1. / 6, 2. / 6, 3. / 6}, 0.03},
		{SH, weighted(DR), [4]float64{0, 1. / 6, 2. / 6, 3. / 6}, 0.03},
		{RR, weighted(DR), [4]float64{0, 1. / 3, 1. / 3, 1. / 3}, 0.001},
		{WRR, weighted(DR), [4]float64{0, 1. / 6, 2. / 6, 3. / 6}, 0.001},
		{LC, weighted(DR), [4]float64{0, 1. / 3, 1. / 3, 1. / 3}, 0.001},
		{WLC, weighted(DR), [4]float64{0, 1. / 6, 2. / 6, 3. / 6}, 0.001},
	} {
		t.Run(tc.sched.String(), func(t *testing.T) {
			d := newTestDataplane(t, Config{})
			mustApply(t, d, State{Services: []Service{service(tc.sched, tc.rs)}})
			grantLease(t, d, vip)
			var got [4]int
			for i := range n {
				// SH hashes the address only: vary it.
				src := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i%100)})
				if tc.sched != SH {
					src = client
				}
				v, out := run(t, d.objs.XdpFront, tcpFrame(src, uint16(10000+i), vip, 80, pkt.SYN, nil))
				if v != xdpTX {
					t.Fatalf("verdict %d", v)
				}
				got[rsOf(out)]++
			}
			if tc.sched == SH {
				// Same client address, any port: same realserver.
				_, a := run(t, d.objs.XdpFront, tcpFrame(client, 1, vip, 80, pkt.SYN, nil))
				_, b := run(t, d.objs.XdpFront, tcpFrame(client, 2, vip, 80, pkt.SYN, nil))
				if rsOf(a) != rsOf(b) {
					t.Errorf("sh: one client on rs%d and rs%d", rsOf(a), rsOf(b))
				}
				// 100 addresses are too few for tight shares.
				tc.tol = 0.15
			}
			for i := 1; i <= 3; i++ {
				share := float64(got[i]) / n
				if math.Abs(share-tc.want[i]) > tc.tol {
					t.Errorf("rs%d: share %.4f, want %.4f±%.3f (counts %v)", i, share, tc.want[i], tc.tol, got[1:])
				}
			}
			st, err := d.Stats()
			if err != nil {
				t.Fatal(err)
			}
			var active int64
			for _, a := range st.Active {
				active += a
			}
			if active < n {
				t.Errorf("active connections %d, want ≥ %d", active, n)
			}
		})
	}
}

// The Go mirror of the hash predicts the programs' Maglev choice exactly.
func TestMaglevPrediction(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 3))}})
	grantLease(t, d, vip)
	si := d.st.svcs[service(MH, nil).ServiceKey]
	for p := uint16(1000); p < 1200; p++ {
		_, out := run(t, d.objs.XdpFront, tcpFrame(client, p, vip, 80, pkt.SYN, nil))
		k := connKeyToWire(ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, p), VIP: netip.AddrPortFrom(vip, 80)})
		want := d.st.realByIdx[si.table[mhSlot(k, uint32(len(si.table)))]]
		if got := rsOf(out); rsFront(got) != want.rs.Addr {
			t.Fatalf("port %d: rs%d, predicted %s", p, got, want.rs.Addr)
		}
	}
}

func TestPersistence(t *testing.T) {
	d := newTestDataplane(t, Config{})
	svc := service(RR, reals(DR, 80, 3))
	svc.Persistence = time.Minute
	mustApply(t, d, State{Services: []Service{svc}})
	grantLease(t, d, vip)
	seen := map[netip.Addr]int{}
	for i := range 60 {
		src := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i%6)})
		_, out := run(t, d.objs.XdpFront, tcpFrame(src, uint16(10000+i), vip, 80, pkt.SYN, nil))
		if prev, ok := seen[src]; ok && prev != rsOf(out) {
			t.Fatalf("client %s moved from rs%d to rs%d", src, prev, rsOf(out))
		}
		seen[src] = rsOf(out)
	}
	// A drained realserver gets no new connections, even persistent ones.
	victim := seen[client]
	svc.Realservers[victim-1].Drain = true
	mustApply(t, d, State{Services: []Service{svc}})
	_, out := run(t, d.objs.XdpFront, tcpFrame(client, 9999, vip, 80, pkt.SYN, nil))
	if rsOf(out) == victim {
		t.Errorf("drained rs%d got a persistent client's new connection", victim)
	}
	if err := d.Flush(nil); err != nil {
		t.Fatal(err)
	}
}

// A full table does not stop forwarding; the loss is counted.
func TestTablesFull(t *testing.T) {
	t.Run("dr", func(t *testing.T) {
		d := newTestDataplane(t, Config{ConnTableSize: 8, RingBufferSize: 4096})
		mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 3))}})
		grantLease(t, d, vip)
		for p := range uint16(200) {
			if v, _ := run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 80, pkt.SYN, nil)); v != xdpTX {
				t.Fatalf("port %d: verdict %d, want tx", p, v)
			}
		}
		st, err := d.Stats()
		if err != nil {
			t.Fatal(err)
		}
		conns, err := d.Connections()
		if err != nil {
			t.Fatal(err)
		}
		// Capacity 8 is 2 buckets of 8 slots.
		if full := st.Reasons[ReasonConnTableFull]; full == 0 || int(full)+len(conns) != 200 || len(conns) > d.conns.slots() {
			t.Errorf("conn_table_full %d with %d connections recorded in %d slots, want the 200 split between them",
				full, len(conns), d.conns.slots())
		}
		// 16 events fit easily; fill the ring with state changes.
		for range 100 {
			for p := range uint16(8) {
				run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 80, pkt.ACK, nil))
				run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 80, pkt.SYN, nil))
				run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 80, pkt.RST, nil))
			}
		}
		if st, _ := d.Stats(); st.Reasons[ReasonEventLost] == 0 {
			t.Error("no event loss counted with a full ring")
		}
	})

	// An unrecorded flow of a NAT service still gets its replies, and its
	// reverse entry expires by itself.
	t.Run("nat", func(t *testing.T) {
		d := newTestDataplane(t, Config{ConnTableSize: 8})
		nat := service(MH, reals(NAT, 8080, 3))
		nat.Timeouts.TCPSynRecv = 100 * time.Millisecond
		dr := Service{ServiceKey: ServiceKey{VIP: vip, Port: 81, Proto: TCP}, Realservers: reals(DR, 81, 3)}
		mustApply(t, d, State{Services: []Service{nat, dr}, Gateways: []netip.Addr{gateway}})
		grantLease(t, d, vip, gateway)
		for p := range uint16(4 * d.conns.slots()) {
			run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 81, pkt.SYN, nil))
		}
		before := counter(t, d, ReasonConnTableFull)
		in := tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)
		if v, _ := run(t, d.objs.XdpFront, in); v != xdpPass {
			t.Fatalf("xdp verdict %d, want pass", v)
		}
		v, out := run(t, d.objs.TcFront, in)
		if v != tcRedirect {
			t.Fatalf("tc front verdict %d, want redirect", v)
		}
		if got := counter(t, d, ReasonConnTableFull) - before; got != 2 {
			t.Errorf("conn_table_full %d, want 2 (XDP and TC)", got)
		}
		rs, _ := netip.AddrFromSlice(out[30:34])
		reply := pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
			pkt.IPv4{Src: rs, Dst: client, Proto: pkt.ProtoTCP}.Packet(
				pkt.TCP{SrcPort: 8080, DstPort: 40000, Flags: pkt.SYN | pkt.ACK}.Segment(rs, client)))
		v, out = run(t, d.objs.TcInside, reply)
		if v != tcRedirect {
			t.Fatalf("reply of an unrecorded connection: verdict %d, want redirect", v)
		}
		if src, _ := netip.AddrFromSlice(out[26:30]); src != vip || be16At(out, 34) != 80 {
			t.Errorf("reply leaves from %s:%d, want %s:80", src, be16At(out, 34), vip)
		}
		if n := len(rnatEntries(t, d)); n != 1 {
			t.Fatalf("%d reverse entries, want 1", n)
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(rnatEntries(t, d)) > 0 {
			if time.Now().After(deadline) {
				t.Fatal("orphan reverse entry never expired")
			}
			if _, err := d.sweep(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // polling the timeout, not settling
		}
	})

	// Schedulers that do not hash keep an unrecorded flow on one
	// realserver: every one of its packets is scheduled afresh.
	for _, sched := range []Scheduler{RR, WRR, LC, WLC} {
		t.Run(sched.String(), func(t *testing.T) {
			d := newTestDataplane(t, Config{ConnTableSize: 8})
			mustApply(t, d, State{Services: []Service{service(sched, reals(DR, 80, 3))}})
			grantLease(t, d, vip)
			for p := range uint16(8) {
				run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 80, pkt.SYN, nil))
			}
			for p := uint16(20000); p < 20010; p++ {
				first := 0
				for i, flags := range []uint8{pkt.SYN, pkt.ACK, pkt.ACK, pkt.ACK | pkt.PSH, pkt.FIN | pkt.ACK} {
					v, out := run(t, d.objs.XdpFront, tcpFrame(client, p, vip, 80, flags, nil))
					if v != xdpTX {
						t.Fatalf("port %d packet %d: verdict %d", p, i, v)
					}
					if i == 0 {
						first = rsOf(out)
					} else if rsOf(out) != first {
						t.Fatalf("port %d packet %d: went to rs%d, flow began on rs%d", p, i, rsOf(out), first)
					}
				}
			}
		})
	}
}

func rnatEntries(t *testing.T, d *Dataplane) map[directorRnatKey]directorRnat {
	t.Helper()
	out := make(map[directorRnatKey]directorRnat)
	d.rnat.walk(func(k ctKey, v *ctVal) { out[ctRnatKey(k)] = *rnatVal(v) })
	return out
}

// A connection first seen mid-stream (a standby that just took over) is
// forwarded to the realserver Maglev gives it, starts in SYN_RECV and is
// promoted by its next packet: a stray ACK does not hold an entry for the
// established timeout.
func TestMidstreamStart(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 3))}})
	grantLease(t, d, vip)
	key := ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, 40000), VIP: netip.AddrPortFrom(vip, 80)}
	si := d.st.svcs[key.service()]
	want := d.st.realByIdx[si.table[mhSlot(connKeyToWire(key), uint32(len(si.table)))]].rs.Addr
	for i, st := range []ConnState{StateSynRecv, StateEstablished, StateEstablished} {
		v, out := run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.ACK, nil))
		if v != xdpTX || rsFront(rsOf(out)) != want {
			t.Fatalf("packet %d: verdict %d to rs%d, want tx to %s", i, v, rsOf(out), want)
		}
		c, ok := connByKey(t, d, key)
		if !ok || c.State != st {
			t.Errorf("packet %d: state %s (present %v), want %s", i, c.State, ok, st)
		}
	}
}

// A table slot naming another service's realserver (a table swap in
// progress, or an unwritten slot reading as index 0) sends nothing there.
func TestStaleTableSlot(t *testing.T) {
	for _, sched := range []Scheduler{RR, LC} {
		t.Run(sched.String(), func(t *testing.T) {
			d := newTestDataplane(t, Config{})
			a := service(sched, reals(DR, 80, 2))
			b := Service{ServiceKey: ServiceKey{VIP: vip, Port: 81, Proto: TCP}, Realservers: []Realserver{{Addr: rsFront(3), Port: 81, Weight: 1, Method: DR}}}
			mustApply(t, d, State{Services: []Service{a, b}})
			grantLease(t, d, vip)
			other := d.st.reals[RealKey{b.ServiceKey, netip.AddrPortFrom(rsFront(3), 81)}].idx
			si := d.st.svcs[a.ServiceKey]
			for slot := range si.table {
				if err := d.st.tables[si.id].Put(uint32(slot), other); err != nil {
					t.Fatal(err)
				}
			}
			for p := uint16(1000); p < 1010; p++ {
				if v, out := run(t, d.objs.XdpFront, tcpFrame(client, p, vip, 80, pkt.SYN, nil)); v == xdpTX && rsOf(out) == 3 {
					t.Fatalf("port %d: new connection went to another service's realserver", p)
				}
			}
		})
	}
}

// A realserver slot reused by another realserver starts its active count
// from zero; the old occupant's connections leaving do not move it.
func TestActiveCountSlotReuse(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(LC, reals(DR, 80, 1))}})
	grantLease(t, d, vip)
	run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil))
	rs2 := []Realserver{{Addr: rsFront(2), Port: 80, Weight: 1, Method: DR}}
	mustApply(t, d, State{Services: []Service{service(LC, rs2)}})
	old := ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, 40000), VIP: netip.AddrPortFrom(vip, 80)}
	if err := d.DeleteConnections([]ConnKey{old}); err != nil {
		t.Fatal(err)
	}
	if v, out := run(t, d.objs.XdpFront, tcpFrame(client, 40001, vip, 80, pkt.SYN, nil)); v != xdpTX || rsOf(out) != 2 {
		t.Fatalf("verdict %d to rs%d, want tx to rs2", v, rsOf(out))
	}
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	k := RealKey{service(LC, nil).ServiceKey, netip.AddrPortFrom(rsFront(2), 80)}
	if got := st.Active[k]; got != 1 {
		t.Errorf("rs2 active %d, want 1", got)
	}
}

// A NAT connection moved to another realserver leaves no reverse entry
// behind, whether the packet path or InstallConnections moves it.
func TestReverseNATFollowsConnection(t *testing.T) {
	d := newTestDataplane(t, Config{})
	rs := reals(NAT, 8080, 2)
	mustApply(t, d, State{Services: []Service{service(MH, rs)}, Gateways: []netip.Addr{gateway}})
	grantLease(t, d, vip, gateway)
	key := ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, 40000), VIP: netip.AddrPortFrom(vip, 80)}
	only := func(step string, want netip.Addr) {
		t.Helper()
		es := rnatEntries(t, d)
		if len(es) != 1 {
			t.Fatalf("%s: %d reverse entries, want 1", step, len(es))
		}
		for k := range es {
			if got := addrFrom32(k.Saddr); got != want {
				t.Errorf("%s: reverse entry for %s, want %s", step, got, want)
			}
		}
	}
	run(t, d.objs.TcFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil))
	c, ok := connByKey(t, d, key)
	if !ok {
		t.Fatal("no connection")
	}
	only("new", c.Real.Addr())
	keep := rs[0]
	if keep.Addr == c.Real.Addr() {
		keep = rs[1]
	}
	mustApply(t, d, State{Services: []Service{service(MH, []Realserver{keep})}, Gateways: []netip.Addr{gateway}})
	run(t, d.objs.TcFront, tcpFrame(client, 40000, vip, 80, pkt.ACK, nil))
	only("rescheduled", keep.Addr)

	mustApply(t, d, State{Services: []Service{service(MH, rs)}, Gateways: []netip.Addr{gateway}})
	moved := Conn{Key: key, Real: c.Real, Method: NAT, State: StateEstablished, LastSeen: time.Now().Add(time.Second)}
	if err := d.InstallConnections([]Conn{moved}); err != nil {
		t.Fatal(err)
	}
	only("installed", c.Real.Addr())
}

// Lease renewals never wait behind whoever holds the dataplane's main
// lock (Apply, a long sweep).
func TestSetLeaseIndependentOfMainLock(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 1))}})
	d.mu.Lock()
	done := make(chan error, 1)
	go func() { done <- d.SetLease(vip, time.Now().Add(time.Hour)) }()
	select {
	case err := <-done:
		d.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		d.mu.Unlock()
		<-done
		t.Fatal("SetLease waited for the main lock")
	}
	if v, _ := run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)); v != xdpTX {
		t.Errorf("verdict %d after the renewal, want tx", v)
	}
}

// A removed VIP's services are gone before its lease slot can go to
// another address, even when Apply fails halfway.
func TestApplyRemovesServicesBeforeLeases(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 1))}})
	grantLease(t, d, vip)
	var many []netip.Addr
	for _, p := range []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.128/25")} {
		for a := p.Addr(); p.Contains(a); a = a.Next() {
			many = append(many, a)
		}
	}
	grantLease(t, d, many...)
	if err := d.Apply(State{VIPs: many}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("apply %d owned addresses: %v, want ErrInvalid", len(many), err)
	}
	if v, _ := run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)); v == xdpTX {
		t.Error("a removed VIP's service forwards under another address's lease")
	}
}

func TestEventsAndExpiry(t *testing.T) {
	d := newTestDataplane(t, Config{SweepInterval: 50 * time.Millisecond})
	svc := service(MH, reals(DR, 80, 3))
	svc.Timeouts = Timeouts{TCPSynRecv: 300 * time.Millisecond, TCPEstablished: 300 * time.Millisecond}
	mustApply(t, d, State{Services: []Service{svc}})
	grantLease(t, d, vip)

	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- d.Run(ctx, func(evs []Event) {
			for _, e := range evs {
				events <- e
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	key := ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, 40000), VIP: netip.AddrPortFrom(vip, 80)}
	run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil))
	run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.ACK, nil))
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < 3 {
		select {
		case e := <-events:
			if e.Conn.Key != key {
				t.Errorf("event for %s", e.Conn.Key)
			}
			got = append(got, e.Type.String()+" "+e.Conn.State.String())
		case <-timeout:
			t.Fatalf("events so far %v", got)
		}
	}
	want := []string{"new SYN_RECV", "state ESTABLISHED", "close ESTABLISHED"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if _, ok := connByKey(t, d, key); ok {
		t.Error("expired connection still in the table")
	}
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for k, a := range st.Active {
		if a != 0 {
			t.Errorf("%s: %d active after expiry", k.Real, a)
		}
	}
}

func TestInstallConnections(t *testing.T) {
	d := newTestDataplane(t, Config{})
	svc := service(MH, reals(DR, 80, 3))
	mustApply(t, d, State{Services: []Service{svc}})
	grantLease(t, d, vip)
	// Find where Maglev would send the client, then install it elsewhere.
	_, out := run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil))
	// Flush finds the entry the program wrote by Go's mirror of its hash.
	if err := d.Flush(&vip); err != nil {
		t.Fatal(err)
	}
	if left, err := d.Connections(); err != nil || len(left) != 0 {
		t.Fatalf("after flush: %d connections, err %v", len(left), err)
	}
	target := rsOf(out)%3 + 1
	key := ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, 40000), VIP: netip.AddrPortFrom(vip, 80)}
	c := Conn{Key: key, Real: netip.AddrPortFrom(rsFront(target), 80), Method: DR, State: StateEstablished, LastSeen: time.Now()}
	if err := d.InstallConnections([]Conn{c}); err != nil {
		t.Fatal(err)
	}
	_, out = run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.ACK, nil))
	if got := rsOf(out); got != target {
		t.Errorf("installed connection went to rs%d, want rs%d", got, target)
	}
	got, _ := connByKey(t, d, key)
	if diff := cmp.Diff(c, got, cmpopts.EquateApproxTime(time.Second), addrCmp); diff != "" {
		t.Errorf("connection (-want +got):\n%s", diff)
	}
	unknown := c
	unknown.Real = netip.MustParseAddrPort("192.0.2.99:80")
	if err := d.InstallConnections([]Conn{unknown}); !errors.Is(err, ErrUnknownRealserver) {
		t.Errorf("unknown realserver: %v, want ErrUnknownRealserver", err)
	}
	if err := d.DeleteConnections([]ConnKey{key}); err != nil {
		t.Fatal(err)
	}
	if _, ok := connByKey(t, d, key); ok {
		t.Error("deleted connection still there")
	}
}

func TestApplyValidation(t *testing.T) {
	d := newTestDataplane(t, Config{})
	for _, tc := range []struct {
		name string
		s    State
	}{
		{"ipv6 vip", State{Services: []Service{{ServiceKey: ServiceKey{VIP: netip.MustParseAddr("2001:db8::1"), Port: 80, Proto: TCP}}}}},
		{"port 0", State{Services: []Service{{ServiceKey: ServiceKey{VIP: vip, Proto: TCP}}}}},
		{"dr port change", State{Services: []Service{service(MH, reals(DR, 81, 1))}}},
		{"duplicate service", State{Services: []Service{service(MH, nil), service(RR, nil)}}},
		{"duplicate realserver", State{Services: []Service{service(MH, append(reals(DR, 80, 1), reals(DR, 80, 1)...))}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := d.Apply(tc.s); !errors.Is(err, ErrInvalid) {
				t.Errorf("got %v, want ErrInvalid", err)
			}
		})
	}
	// Idempotent: the same state twice leaves the same indexes and tables.
	s := State{Services: []Service{service(MH, reals(DR, 80, 3))}}
	mustApply(t, d, s)
	si := d.st.svcs[s.Services[0].ServiceKey]
	tbl := d.st.tables[si.id]
	mustApply(t, d, s)
	if d.st.tables[si.id] != tbl {
		t.Error("unchanged service got a new table")
	}
	if int(numReasons) != int(d.objs.Reasons.MaxEntries()) {
		t.Errorf("Go knows %d reasons, the programs %d", numReasons, d.objs.Reasons.MaxEntries())
	}
}

// A bucket lock held elsewhere (Go, or a CPU the holder cannot leave)
// costs no connection its realserver: a retransmitted SYN still finds its
// entry, and an unrecorded SYN's flow-hash pick is what its next packet,
// recorded mid-stream, gets too.
func TestConnTableBusy(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(RR, reals(DR, 80, 3))}})
	grantLease(t, d, vip)
	home := func(port uint16) uint32 {
		k := connKeyToWire(ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, port), VIP: netip.AddrPortFrom(vip, 80)})
		h, _, _ := ctHash(connCTKey(k), d.conns.seed, uint32(len(d.conns.buckets)))
		return h
	}
	_, out := run(t, d.objs.XdpFront, tcpFrame(client, 40001, vip, 80, pkt.SYN, nil))
	recorded := rsOf(out)
	// rr would move a second pick: send enough SYNs elsewhere to turn it.
	run(t, d.objs.XdpFront, tcpFrame(client, 40100, vip, 80, pkt.SYN, nil))

	d.conns.lock(home(40001))
	_, out = run(t, d.objs.XdpFront, tcpFrame(client, 40001, vip, 80, pkt.SYN, nil))
	d.conns.unlock(home(40001))
	if got := rsOf(out); got != recorded {
		t.Errorf("retransmitted SYN under a held lock went to rs%d, want its recorded rs%d", got, recorded)
	}
	if counter(t, d, ReasonConnTableBusy) == 0 {
		t.Error("conn_table_busy not counted")
	}

	for p := uint16(40200); p < 40210; p++ {
		d.conns.lock(home(p))
		_, syn := run(t, d.objs.XdpFront, tcpFrame(client, p, vip, 80, pkt.SYN, nil))
		d.conns.unlock(home(p))
		_, ack := run(t, d.objs.XdpFront, tcpFrame(client, p, vip, 80, pkt.ACK, nil))
		if rsOf(syn) != rsOf(ack) {
			t.Errorf("port %d: unrecorded SYN went to rs%d, its ACK to rs%d", p, rsOf(syn), rsOf(ack))
		}
	}
}

// TestConnTableAway: the programs keep each home bucket's count of keys
// sent to their alternate bucket exact through inserts and deletes (the
// reverse-NAT entries of rescheduled connections), so lookups that skip
// the alternate bucket still find every connection.
func TestConnTableAway(t *testing.T) {
	d := newTestDataplane(t, Config{ConnTableSize: 64})
	svc := service(MH, reals(NAT, 8080, 3))
	mustApply(t, d, State{Services: []Service{svc}, Gateways: []netip.Addr{gateway}})
	grantLease(t, d, vip, gateway)
	const flows = 60
	picked := make(map[uint16]int)
	for p := range uint16(flows) {
		_, out := run(t, d.objs.TcFront, tcpFrame(client, 10000+p, vip, 80, pkt.SYN, nil))
		picked[p] = rsInsideOf(out)
	}
	checkAway(t, d.conns)
	checkAway(t, d.rnat)
	away := 0
	for b := range d.conns.buckets {
		away += int(d.conns.buckets[b].Away)
	}
	if away == 0 {
		t.Fatal("no connection went to its alternate bucket; the test proves nothing")
	}
	for p := range uint16(flows) {
		if _, out := run(t, d.objs.TcFront, tcpFrame(client, 10000+p, vip, 80, pkt.ACK, nil)); rsInsideOf(out) != picked[p] {
			t.Fatalf("port %d: realserver %d, then %d", 10000+p, picked[p], rsInsideOf(out))
		}
	}
	// Realserver 1 leaves: its connections' next packets are scheduled
	// afresh and their reverse entries deleted by the program.
	svc.Realservers = svc.Realservers[1:]
	mustApply(t, d, State{Services: []Service{svc}, Gateways: []netip.Addr{gateway}})
	for p := range uint16(flows) {
		run(t, d.objs.TcFront, tcpFrame(client, 10000+p, vip, 80, pkt.ACK, nil))
	}
	if counter(t, d, ReasonConnRescheduled) == 0 {
		t.Fatal("no connection was rescheduled")
	}
	checkAway(t, d.conns)
	checkAway(t, d.rnat)
	var keys []ConnKey
	for p := range uint16(flows / 2) {
		keys = append(keys, ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, 10000+p), VIP: netip.AddrPortFrom(vip, 80)})
	}
	if err := d.DeleteConnections(keys); err != nil {
		t.Fatal(err)
	}
	checkAway(t, d.conns)
	checkAway(t, d.rnat)
}

// rsInsideOf is the NAT realserver (1..3) a translated frame goes to, 0 if none.
func rsInsideOf(frame []byte) int {
	for i := 1; i <= 3; i++ {
		if len(frame) >= 34 && string(frame[30:34]) == string(rsInside(i).AsSlice()) {
			return i
		}
	}
	return 0
}

// TestCrowded: the sweep tells the programs when a table is at least
// half full (they then fetch both buckets of a lookup at once), and when
// it no longer is; lookups find the same connections either way.
func TestCrowded(t *testing.T) {
	d := newTestDataplane(t, Config{ConnTableSize: 64})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 3))}})
	grantLease(t, d, vip)
	crowded := func() uint32 {
		t.Helper()
		var c directorConfig
		if err := d.objs.Cfg.Lookup(uint32(0), &c); err != nil {
			t.Fatal(err)
		}
		return c.CtCrowded
	}
	picked := make(map[uint16]int)
	for p := range uint16(40) {
		_, out := run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 80, pkt.SYN, nil))
		picked[p] = rsOf(out)
	}
	if _, err := d.sweep(); err != nil {
		t.Fatal(err)
	}
	if crowded() != 1 {
		t.Fatal("40 connections in a table of 64: not crowded")
	}
	for p := range uint16(40) {
		if _, out := run(t, d.objs.XdpFront, tcpFrame(client, 10000+p, vip, 80, pkt.ACK, nil)); rsOf(out) != picked[p] {
			t.Fatalf("port %d: realserver %d, then %d", 10000+p, picked[p], rsOf(out))
		}
	}
	if err := d.Flush(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.sweep(); err != nil {
		t.Fatal(err)
	}
	if crowded() != 0 {
		t.Fatal("empty table still crowded")
	}
}
