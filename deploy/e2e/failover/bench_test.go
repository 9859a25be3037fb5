package failover

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raftlb/raftlb/deploy/lab"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// The benchmarks' services: a UDP DR service the outage probe runs through, and one
// TCP DR service per scheduler for connection survival.
const probeVIP = "198.51.100.50"

var schedulerVIPs = []struct{ sched, vip string }{
	{"mh", "198.51.100.60"}, {"sh", "198.51.100.61"}, {"rr", "198.51.100.62"},
	{"wrr", "198.51.100.63"}, {"lc", "198.51.100.64"}, {"wlc", "198.51.100.65"},
}

func addBenchServices(l *haLab) {
	l.declareGateway()
	l.addService(echoService{probeVIP, "udp", "dr", "mh"})
	for _, s := range schedulerVIPs {
		l.addService(echoService{s.vip, "tcp", "dr", s.sched})
	}
}

// outageTrials is how many owner failures each outage benchmark measures.
const (
	outageTrials       = 24
	leaderOutageTrials = 6
)

// BenchmarkFailoverOutage measures, over repeated SIGKILLs of the VIP's owner, the
// time from the kill until the first packet of a probe stream (one UDP datagram every
// 10 ms through the VIP, echoed by the realserver) sent after the kill is delivered
// through the new owner. "owner" kills an owner that is not the Raft leader (the usual
// case: with the witness or the other director leading, a lost owner's VIP moves about
// one lease after its last renewal); "owner-and-leader" kills a director that owns the
// VIP and leads, so a new leader must be elected first and then wait out a full lease
// from its election. Reported: p50-ms, max-ms and trials.
func BenchmarkFailoverOutage(b *testing.B) {
	l := upLab(b, "rlbfb-", nil, addBenchServices) // the probe is UDP: it checks itself
	l.waitOwners("d1", probeVIP)
	p := l.startProbe(probeVIP)
	p.waitFlowing(b)
	b.Run("owner", func(b *testing.B) {
		var outages []time.Duration
		for range outageTrials {
			owner, leader := l.ownerAndLeader(probeVIP)
			if owner == leader {
				other := map[string]string{"d1": "d2", "d2": "d1"}[owner]
				l.mustCLI("vip", "move", probeVIP, "--to", other)
				l.waitOwners(other, probeVIP)
				owner = other
			}
			outages = append(outages, l.killAndMeasure(b, p, owner))
		}
		reportOutages(b, outages)
	})
	b.Run("owner-and-leader", func(b *testing.B) {
		var outages []time.Duration
		for range leaderOutageTrials {
			leader := l.directorLeader(b)
			if owner, _ := l.ownerAndLeader(probeVIP); owner != leader {
				l.mustCLI("vip", "move", probeVIP, "--to", leader)
				l.waitOwners(leader, probeVIP)
			}
			outages = append(outages, l.killAndMeasure(b, p, leader))
		}
		reportOutages(b, outages)
	})
}

func reportOutages(b *testing.B, ds []time.Duration) {
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(ds[len(ds)/2]), "p50-ms")
	b.ReportMetric(ms(ds[len(ds)-1]), "max-ms")
	b.ReportMetric(float64(len(ds)), "trials")
	b.Logf("outages: %v", ds)
}

// ownerAndLeader returns the probe VIP's owner and the Raft leader, as the witness
// sees them.
func (l *haLab) ownerAndLeader(vip string) (string, string) {
	l.tb.Helper()
	var st raftlbv1.GetStatusResponse
	eventually(l.tb, 10*time.Second, "read status", func() error { return l.getJSON("w1", &st, "status") })
	owner := ""
	for _, a := range st.GetAddresses() {
		if a.GetAddress() == vip {
			owner = a.GetOwner()
		}
	}
	return owner, st.GetLeaderId()
}

// directorLeader makes a full director the Raft leader (killing and restarting the
// witness while it leads) and returns its id.
func (l *haLab) directorLeader(tb testing.TB) string {
	tb.Helper()
	for range 10 {
		_, leader := l.ownerAndLeader(probeVIP)
		if leader == "d1" || leader == "d2" {
			return leader
		}
		l.signal("w1", syscall.SIGKILL)
		l.waitGone("w1")
		var st raftlbv1.GetStatusResponse
		eventually(tb, 20*time.Second, "a director leads", func() error {
			if err := l.getJSON("d1", &st, "status"); err != nil {
				return err
			}
			if st.GetLeaderId() == "" || st.GetLeaderId() == "w1" {
				return fmt.Errorf("leader %q", st.GetLeaderId())
			}
			return nil
		})
		l.restart("w1")
	}
	tb.Fatal("the witness kept winning the elections")
	return ""
}

// killAndMeasure kills director id, the probe VIP's owner, measures the outage the
// probe sees, restarts it and waits until it is a ready standby again.
func (l *haLab) killAndMeasure(tb testing.TB, p *probe, id string) time.Duration {
	tb.Helper()
	p.waitFlowing(tb)
	killed := time.Now()
	l.signal(id, syscall.SIGKILL)
	outage := p.waitNewOwner(tb, killed)
	l.waitGone(id)
	l.restart(id)
	eventually(tb, 20*time.Second, id+" installs the probe's flow", func() error {
		cs, err := l.connections(id, probeVIP, 0)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if c.GetClientPort() == uint32(p.localPort()) {
				return nil
			}
		}
		return fmt.Errorf("no entry for the probe from port %d", p.localPort())
	})
	return outage
}

// probe sends a numbered, timestamped UDP datagram every 10 ms to a VIP's echo port
// and records when each echo came back.
type probe struct {
	conn net.Conn
	mu   sync.Mutex
	sent []time.Time // by sequence number
	got  []time.Time // zero until echoed
}

const probeInterval = 10 * time.Millisecond

func (l *haLab) startProbe(vip string) *probe {
	l.tb.Helper()
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	addr := netip.AddrPortFrom(netip.MustParseAddr(vip), lab.BackendEchoPort).String()
	conn, err := l.DialContext("client")(ctx, "udp4", addr)
	if err != nil {
		l.tb.Fatalf("dial %s: %v", addr, err)
	}
	p := &probe{conn: conn}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { p.send(stop) })
	wg.Go(p.receive)
	l.tb.Cleanup(func() {
		close(stop)
		conn.Close()
		wg.Wait()
	})
	return p
}

func (p *probe) localPort() int { return p.conn.LocalAddr().(*net.UDPAddr).Port }

func (p *probe) send(stop <-chan struct{}) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	buf := make([]byte, 8)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		seq := len(p.sent)
		p.sent = append(p.sent, time.Now())
		p.got = append(p.got, time.Time{})
		p.mu.Unlock()
		binary.BigEndian.PutUint64(buf, uint64(seq))
		_, _ = p.conn.Write(buf) // a failed send is a lost probe, which is what is measured
	}
}

func (p *probe) receive() {
	buf := make([]byte, 64)
	for {
		n, err := p.conn.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // e.g. an ICMP error queued on the socket: the probe just goes on
		}
		if n < 8 {
			continue
		}
		now := time.Now()
		seq := int(binary.BigEndian.Uint64(buf))
		p.mu.Lock()
		if seq < len(p.got) && p.got[seq].IsZero() {
			p.got[seq] = now
		}
		p.mu.Unlock()
	}
}

// waitFlowing waits until probes are being echoed.
func (p *probe) waitFlowing(tb testing.TB) {
	tb.Helper()
	since := time.Now()
	eventually(tb, 20*time.Second, "probes are echoed", func() error {
		if _, ok := p.firstDeliveredAfter(since); !ok {
			return fmt.Errorf("no echo of a probe sent since %s", since.Format("15:04:05.000"))
		}
		return nil
	})
}

// firstDeliveredAfter returns the send time of the first probe sent after t that was
// echoed.
func (p *probe) firstDeliveredAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, s := range p.sent {
		if s.After(t) && !p.got[i].IsZero() {
			return s, true
		}
	}
	return time.Time{}, false
}

// waitNewOwner waits until probes flow again after the failure at t and returns how
// long after t the first probe delivered through the new owner was sent. A killed
// director's programs keep forwarding until the kernel has torn the process down
// (tens of milliseconds), so the first probe through the new owner is the first one
// delivered after the longest silence following t.
func (p *probe) waitNewOwner(tb testing.TB, t time.Time) time.Duration {
	tb.Helper()
	var first time.Time
	eventually(tb, 20*time.Second, "probes flow again after the failure", func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		var prev, after time.Time
		var longest time.Duration
		delivered := 0
		for i, s := range p.sent {
			if p.got[i].IsZero() {
				continue
			}
			if !s.Before(t) {
				if gap := s.Sub(prev); !prev.IsZero() && gap > longest {
					longest, after = gap, s
				}
				delivered++
			}
			prev = s
		}
		// Flowing again: a second's worth of probes delivered since the silence.
		if after.IsZero() || time.Since(after) < time.Second || delivered < 50 {
			return fmt.Errorf("%d probes delivered since the failure", delivered)
		}
		first = after
		return nil
	})
	return first.Sub(t)
}

// BenchmarkConnectionSurvival opens TCP connections through a DR service per
// scheduler, kills the owner and checks which still carry data through the new owner.
// "old" connections were replicated to the standby before the kill (older than one
// sync batch); "young" ones were opened right before it. Reported per scheduler:
// old-survived-% and young-survived-% over three kills of 10 + 10 connections each.
func BenchmarkConnectionSurvival(b *testing.B) {
	vips := make([]string, len(schedulerVIPs))
	for i, s := range schedulerVIPs {
		vips[i] = s.vip
	}
	l := upLab(b, "rlbfs-", nil, addBenchServices, vips...)
	type tally struct{ old, oldOK, young, youngOK int }
	res := make(map[string]*tally)
	for _, s := range schedulerVIPs {
		res[s.vip] = &tally{}
	}
	for range 3 {
		owner, _ := l.ownerAndLeader(schedulerVIPs[0].vip)
		standby := map[string]string{"d1": "d2", "d2": "d1"}[owner]
		old := l.startStreams(10, vips...)
		progressed(b, old, 3, 10*time.Second)
		l.waitReplicated(standby, old)
		young := l.startStreams(10, vips...)
		l.signal(owner, syscall.SIGKILL)
		l.waitGone(owner)
		l.waitOwners(standby, vips...)
		// Every surviving connection completes round trips again within this.
		deadline := time.Now().Add(15 * time.Second)
		for _, set := range []struct {
			streams []*echoStream
			young   bool
		}{{old, false}, {young, true}} {
			for _, s := range set.streams {
				base := s.n.Load()
				for s.failed() == nil && s.n.Load() < base+3 && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond) // poll interval under a deadline
				}
				ok := s.failed() == nil && s.n.Load() >= base+3
				t := res[s.vip]
				if set.young {
					t.young++
					if ok {
						t.youngOK++
					}
				} else {
					t.old++
					if ok {
						t.oldOK++
					}
				}
			}
		}
		for _, s := range append(old, young...) {
			s.finish()
		}
		l.restart(owner)
	}
	for _, s := range schedulerVIPs {
		t := res[s.vip]
		b.Run(s.sched, func(b *testing.B) {
			b.ReportMetric(100*float64(t.oldOK)/float64(t.old), "old-survived-%")
			b.ReportMetric(100*float64(t.youngOK)/float64(t.young), "young-survived-%")
		})
	}
}

// BenchmarkConnSyncLab opens TCP connections from the client through the mh DR
// service's VIP as fast as connSyncDialers concurrent dialers manage, for at most
// connSyncOpenFor and at most connSyncMaxConns (fewer if the file descriptor limit
// is lower), holds them all open and polls the standby director's table until it
// holds at least 99% of them. Reported: conns/s (connections established per second
// through the owner), standby-lag-ms (from the last connection established until a
// poll of the standby saw 99% of them; the poll's own duration included) and
// replicated-% (share of the connections the standby held at the end).
func BenchmarkConnSyncLab(b *testing.B) {
	vip := schedulerVIPs[0].vip // mh
	l := upLab(b, "rlbfc-", nil, addBenchServices, vip)
	owner, _ := l.ownerAndLeader(vip)
	standby := map[string]string{"d1": "d2", "d2": "d1"}[owner]
	if standby == "" {
		b.Fatalf("%s is owned by %q, not a director", vip, owner)
	}

	limit := connSyncMaxConns
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && int(rl.Cur)-2000 < limit {
		limit = max(int(rl.Cur)-2000, 100) // leave descriptors for the lab's own use
	}
	held := l.openConns(vip, limit)
	if len(held.ports) == 0 {
		b.Fatalf("no connection to %s established (%d dial errors, first: %v)", vip, held.failed, held.firstErr)
	}
	elapsed := held.last.Sub(held.first)
	b.Logf("%d connections held to %s through %s in %v (%d dial errors, first: %v)",
		len(held.ports), vip, owner, elapsed, held.failed, held.firstErr)

	// Poll the standby until it holds 99% of the connections.
	want := (len(held.ports)*99 + 99) / 100
	var got, polls int
	var reached time.Time
	var pollTime time.Duration
	deadline := time.Now().Add(connSyncWait)
	for time.Now().Before(deadline) {
		start := time.Now()
		cs, err := l.connections(standby, vip, len(held.ports)+1000)
		pollTime += time.Since(start)
		polls++
		if err == nil {
			got = 0
			for _, c := range cs {
				if _, ok := held.ports[uint16(c.GetClientPort())]; ok {
					got++
				}
			}
			if got >= want {
				reached = time.Now()
				break
			}
		}
		time.Sleep(20 * time.Millisecond) // poll interval under a deadline
	}
	b.Logf("standby %s holds %d of %d after %d polls of %v on average", standby, got, len(held.ports), polls,
		(pollTime / time.Duration(max(polls, 1))).Round(time.Millisecond))
	b.ReportMetric(float64(len(held.ports))/elapsed.Seconds(), "conns/s")
	lag := connSyncWait
	if !reached.IsZero() {
		lag = reached.Sub(held.last)
	} else {
		b.Logf("the standby did not hold 99%% within %v", connSyncWait)
	}
	b.ReportMetric(float64(lag.Microseconds())/1000, "standby-lag-ms")
	b.ReportMetric(100*float64(got)/float64(len(held.ports)), "replicated-%")
}

// The bounds of BenchmarkConnSyncLab's connection burst and of its wait for the
// standby.
const (
	connSyncDialers  = 64
	connSyncOpenFor  = 5 * time.Second
	connSyncMaxConns = 50000
	connSyncWait     = 10 * time.Second
)

// heldConns are connections kept open until the benchmark's cleanup.
type heldConns struct {
	ports       map[uint16]struct{} // the client's ports
	first, last time.Time           // first dial started, last connection established
	failed      int                 // dials that failed before the burst's deadline
	firstErr    error               // the first of them
}

// openConns opens up to n TCP connections from the client to vip's echo port with
// connSyncDialers dialers for at most connSyncOpenFor and keeps them open until
// cleanup. Each dialer stays in the client's namespace for all its dials.
func (l *haLab) openConns(vip string, n int) *heldConns {
	l.tb.Helper()
	addr := netip.AddrPortFrom(netip.MustParseAddr(vip), lab.BackendEchoPort).String()
	ctx, cancel := context.WithTimeout(l.ctx, connSyncOpenFor)
	defer cancel()
	var (
		mu    sync.Mutex
		conns []net.Conn
		h     = &heldConns{ports: make(map[uint16]struct{}, n)}
		wg    sync.WaitGroup
	)
	l.tb.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	h.first = time.Now()
	for range connSyncDialers {
		wg.Go(func() {
			err := l.InNS("client", func() error {
				var d net.Dialer
				// The dial's own deadline may pass before ctx reports it.
				end, _ := ctx.Deadline()
				for ctx.Err() == nil && time.Now().Before(end) {
					mu.Lock()
					full := len(conns) >= n
					mu.Unlock()
					if full {
						return nil
					}
					c, err := d.DialContext(ctx, "tcp4", addr)
					now := time.Now()
					mu.Lock()
					if err != nil {
						if ctx.Err() == nil && now.Before(end) {
							h.fail(err)
						}
					} else if len(conns) >= n {
						c.Close() // another dialer filled the last slot
					} else {
						conns = append(conns, c)
						h.ports[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = struct{}{}
						h.last = now
					}
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				mu.Lock()
				h.fail(err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return h
}

func (h *heldConns) fail(err error) {
	h.failed++
	if h.firstErr == nil {
		h.firstErr = err
	}
}
