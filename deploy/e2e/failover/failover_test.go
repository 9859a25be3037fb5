package failover

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raftlb/raftlb/deploy/lab"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// TestFailover walks one lab through every way an owner can go away, in order, with
// long-lived streams and new connections running through DR, TUN and NAT (mh) and a
// DR service with rr:
//
//  1. SIGKILL of the owner d1: d2 takes over, the client's ARP entry for every VIP
//     moves to d2, no stream breaks, new connections succeed;
//  2. d1 restarts: it catches up (its snapshot, then the log) and takes nothing back;
//  3. `raftlb vip move` hands the DR VIP and the NAT group back to d1 gracefully;
//  4. SIGTERM of d1: a graceful shutdown hands everything to d2;
//  5. SIGSTOP of d2 (owner of everything): it falls silent at its lease deadline,
//     d1 takes over, and after SIGCONT d2 never answers for a VIP again;
//  6. d1's inside link cut while the client still reaches it: it falls silent when
//     its lease ends, d2 takes over, and healing leaves exactly one owner, which
//     announces itself afresh;
//  7. SIGKILL of the Raft leader while it owns nothing: a new leader is in place
//     before the owner's leases run out, and nothing moves.
//
// Throughout, an ARP watcher on the client's link checks that no two directors ever
// answer for a VIP in overlapping times.
func TestFailover(t *testing.T) {
	// Frequent snapshots, so that a restarted director restores one and then
	// replays the log after it.
	l := upLab(t, "rlbfo-", []string{"--snapshot-interval", "1s", "--snapshot-threshold", "16"}, (*haLab).addServices, allVIPs...)
	d1, d2 := macOf(t, "d1"), macOf(t, "d2")
	arp := l.watchARP(20*time.Millisecond, allVIPs...)

	// Three long-lived streams per service; all replicated to d2 before anything fails,
	// so even rr's survive (they are older than one sync batch).
	streams := l.startStreams(3, allVIPs...)
	progressed(t, streams, 5, 10*time.Second)
	l.waitReplicated("d2", streams)
	short := l.startShortConns(100*time.Millisecond, allVIPs...)

	t.Run("sigkill owner", func(t *testing.T) {
		// So that its restart below restores a snapshot and replays the log after it.
		eventually(t, 15*time.Second, "d1 has taken a snapshot", func() error {
			if snaps, _ := filepath.Glob(filepath.Join(l.Dir, "data", "d1", "snapshots", "*", "state.bin")); len(snaps) == 0 {
				return fmt.Errorf("none yet")
			}
			return nil
		})
		before := l.owners()
		killed := time.Now()
		l.signal("d1", syscall.SIGKILL)
		l.waitGone("d1")
		l.waitOwners("d2", allVIPs...)
		l.waitClientNeigh(d2, allVIPs...)
		progressed(t, streams, 25, 20*time.Second)
		after := l.owners()
		for _, v := range allVIPs {
			if after[v] == before[v] {
				t.Errorf("%s: owner@epoch %s did not change", v, after[v])
			}
		}
		logGaps(t, streams, killed)
		checkNewConnections(t, l, short, allVIPs)
		arp.checkNoOverlap(t, killed, time.Now(), allVIPs...)
	})

	t.Run("restart does not take back", func(t *testing.T) {
		l.restart("d1")
		// d1 installs every replicated connection (snapshot and log), as a standby should.
		l.waitReplicated("d1", streams)
		hold := time.Now().Add(4 * lab.LeaseDuration)
		for time.Now().Before(hold) {
			for v, o := range l.owners() {
				if !strings.HasPrefix(o, "d2@") {
					t.Fatalf("%s moved to %s after d1 restarted", v, o)
				}
			}
			time.Sleep(100 * time.Millisecond) // poll interval under a deadline
		}
		progressed(t, streams, 5, 10*time.Second)
	})

	t.Run("vip move", func(t *testing.T) {
		moved := time.Now()
		l.mustCLI("vip", "move", vipDR, "--to", "d1")
		l.mustCLI("vip", "move", vipNAT, "--to", "d1")
		l.waitOwners("d1", vipDR, vipNAT, lab.Gateway.String())
		l.waitOwners("d2", vipTUN, vipRR)
		l.waitClientNeigh(d1, vipDR, vipNAT)
		progressed(t, streams, 25, 20*time.Second)
		arp.checkNoOverlap(t, moved, time.Now(), allVIPs...)
	})

	t.Run("sigterm owner", func(t *testing.T) {
		stopped := time.Now()
		l.signal("d1", syscall.SIGTERM)
		l.waitGone("d1")
		l.waitOwners("d2", allVIPs...)
		l.waitClientNeigh(d2, allVIPs...)
		progressed(t, streams, 25, 20*time.Second)
		logGaps(t, streams, stopped)
		arp.checkNoOverlap(t, stopped, time.Now(), allVIPs...)
		l.restart("d1")
		l.waitReplicated("d1", streams)
	})

	t.Run("sigstop owner", func(t *testing.T) {
		stopped := time.Now()
		l.signal("d2", syscall.SIGSTOP)
		l.waitOwners("d1", allVIPs...)
		l.waitClientNeigh(d1, allVIPs...)
		progressed(t, streams, 25, 20*time.Second)
		logGaps(t, streams, stopped)
		resumed := time.Now()
		l.signal("d2", syscall.SIGCONT)
		// d2 resumes with leases long past: it must neither answer nor announce.
		progressed(t, streams, 2*int64(4*lab.LeaseDuration/streamInterval)/3, 20*time.Second)
		for _, v := range allVIPs {
			for _, r := range arp.runs(v, resumed, time.Now()) {
				if r.mac == d2 {
					t.Errorf("d2 answered ARP for %s after SIGCONT: %v", v, r)
				}
			}
		}
		arp.checkNoOverlap(t, stopped, time.Now(), allVIPs...)
		l.waitOwners("d1", allVIPs...)
	})

	t.Run("partition owner", func(t *testing.T) {
		cut := time.Now()
		if err := l.Disconnect(l.ctx, "d1", lab.InsideIface); err != nil {
			t.Fatal(err)
		}
		l.waitOwners("d2", allVIPs...)
		l.waitClientNeigh(d2, allVIPs...)
		// d1 still reaches the client, and the leader's API over the front link, so
		// it renews its lease until Raft tells it that it has lost the leader (a
		// follower notices within two heartbeat timeouts); then it answers only until
		// that last lease ends.
		silentBy := cut.Add(3*raftHeartbeat + lab.LeaseDuration + 100*time.Millisecond)
		for _, v := range allVIPs {
			for _, r := range arp.runs(v, cut, time.Now()) {
				if r.mac == d1 && r.last.After(silentBy) {
					t.Errorf("d1 answered ARP for %s %v after the cut, after its last lease must have ended: %v", v, r.last.Sub(cut), r)
				}
			}
		}
		progressed(t, streams, 25, 20*time.Second)
		logGaps(t, streams, cut)

		// Hold the partition until d2's memberlist has declared d1 dead (a few
		// seconds), as a real one would last: its return is what makes d2 announce
		// itself afresh.
		eventually(t, 15*time.Second, "d2 sees d1 dead", func() error {
			var st raftlbv1.GetStatusResponse
			if err := l.getJSON("d2", &st, "status"); err != nil {
				return err
			}
			for _, d := range st.GetDirectors() {
				if d.GetDirector().GetId() == "d1" && d.GetGossipState() != "dead" {
					return fmt.Errorf("d1 is %q", d.GetGossipState())
				}
			}
			return nil
		})
		healed := time.Now()
		if err := l.Reconnect(l.ctx, "d1", lab.InsideIface); err != nil {
			t.Fatal(err)
		}
		l.restartIfGone("d1")
		// Exactly one owner, which stays put, and announces itself afresh once d1 is
		// back among the members.
		eventually(t, 15*time.Second, "a fresh gratuitous ARP burst from d2 after the heal", func() error {
			for _, v := range []string{vipDR, vipTUN, vipNAT, vipRR} {
				if n := arp.gratuitous(v, d2, healed, time.Now()); n < 2 {
					return fmt.Errorf("%d gratuitous ARPs for %s from d2 since the heal", n, v)
				}
			}
			return nil
		})
		settled := l.owners()
		hold := time.Now().Add(6 * lab.LeaseDuration)
		for time.Now().Before(hold) {
			now := l.owners()
			for v, o := range now {
				if o != settled[v] || !strings.HasPrefix(o, "d2@") {
					t.Fatalf("%s flapped after the heal: %s, then %s", v, settled[v], o)
				}
			}
			time.Sleep(100 * time.Millisecond) // poll interval under a deadline
		}
		arp.checkNoOverlap(t, cut, time.Now(), allVIPs...)
		progressed(t, streams, 5, 10*time.Second)
	})

	t.Run("sigkill raft leader", func(t *testing.T) {
		// The leader grants every lease; when it dies, a new one must be in place
		// before the owners' leases run out. Nothing may move: the owner keeps its
		// VIPs at the same epoch and the streams go on.
		owners := l.owners()
		var st raftlbv1.GetStatusResponse
		if err := l.getJSON("d1", &st, "status"); err != nil {
			t.Fatal(err)
		}
		leader := st.GetLeaderId()
		for _, o := range owners {
			if strings.HasPrefix(o, leader+"@") {
				t.Skipf("the leader %s owns VIPs; losing it is the sigkill-owner case", leader)
			}
		}
		killed := time.Now()
		l.signal(leader, syscall.SIGKILL)
		l.waitGone(leader)
		other := map[string]string{"d1": "w1", "d2": "w1", "w1": "d1"}[leader]
		eventually(t, 20*time.Second, "a new leader", func() error {
			var st raftlbv1.GetStatusResponse
			if err := l.getJSON(other, &st, "status"); err != nil {
				return err
			}
			if st.GetLeaderId() == "" || st.GetLeaderId() == leader {
				return fmt.Errorf("leader %q", st.GetLeaderId())
			}
			return nil
		})
		progressed(t, streams, 25, 20*time.Second)
		logGaps(t, streams, killed)
		var after raftlbv1.ListAddressesResponse
		if err := l.getJSON(other, &after, "vip", "list"); err != nil {
			t.Fatal(err)
		}
		for _, a := range after.GetAddresses() {
			if got := a.GetOwner() + "@" + fmt.Sprint(a.GetEpoch()); got != owners[a.GetAddress()] {
				t.Errorf("%s moved from %s to %s when the leader died", a.GetAddress(), owners[a.GetAddress()], got)
			}
		}
		l.restart(leader)
	})

	for _, s := range streams {
		n, err := s.finish()
		if err != nil {
			t.Errorf("stream to %s from port %d: %v after %d round trips", s.vip, s.localPort(), err, n)
		}
	}
}

// raftHeartbeat is the directors' Raft heartbeat timeout (the default).
const raftHeartbeat = 250 * time.Millisecond

// restartIfGone restarts director id if it is not running (it is after a partition).
func (l *haLab) restartIfGone(id string) {
	l.tb.Helper()
	if err := l.Signal(id, 0); err != nil {
		l.restart(id)
	}
}

// logGaps logs the longest pause of each stream since the failure at t.
func logGaps(t *testing.T, streams []*echoStream, at time.Time) {
	t.Helper()
	worst := make(map[string]time.Duration)
	for _, s := range streams {
		worst[s.vip] = max(worst[s.vip], s.gap())
	}
	t.Logf("longest stream pause per VIP around the failure at %s: %v", at.Format("15:04:05.000"), worst)
}

// checkNewConnections checks that, once the new owner answers, every new connection to
// every VIP succeeds: each VIP's attempts from the first success after the failure on
// are all good.
func checkNewConnections(t *testing.T, l *haLab, sc *shortConns, vips []string) {
	t.Helper()
	since := time.Now()
	eventually(t, 10*time.Second, "new connections through every VIP", func() error {
		n := make(map[string]int)
		for _, a := range sc.since(since) {
			if a.err != nil {
				return fmt.Errorf("new connection to %s at %s: %w", a.vip, a.start.Format("15:04:05.000"), a.err)
			}
			n[a.vip]++
		}
		for _, v := range vips {
			if n[v] < 5 {
				return fmt.Errorf("%d new connections to %s so far", n[v], v)
			}
		}
		return nil
	})
}
