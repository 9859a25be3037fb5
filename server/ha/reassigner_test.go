package ha

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func assignCmd(as ...*raftlbv1.Address) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_AssignAddresses{AssignAddresses: &raftlbv1.AssignAddresses{Addresses: as}}}
}

// TestReassignerFailover walks an owner loss step by step on a fake clock.
func TestReassignerFailover(t *testing.T) {
	const a = "198.51.100.10"
	f := newHAFixture(t, vip(a, "d1", "d1", 2))
	ip := mustAddr(t, a)
	f.clk.Advance(100 * time.Millisecond)
	f.grant(t, "d1", Claim{ip, 2})
	lastD1 := f.clk.Now()
	f.grant(t, "d2")

	steps := []struct {
		name      string
		at        time.Duration // after d1's last grant
		heartbeat bool          // d2 asks for (no) leases first
		hintDead  bool
		wantOwner string
		wantEpoch uint64
	}{
		{name: "owner alive", at: 400 * time.Millisecond, heartbeat: true, wantOwner: "d1", wantEpoch: 2},
		{name: "memberlist says dead: still waits", at: 800 * time.Millisecond, heartbeat: true, hintDead: true, wantOwner: "d1", wantEpoch: 2},
		{name: "exactly at the bound", at: testLease + testMargin, heartbeat: true, wantOwner: "d1", wantEpoch: 2},
		{name: "after the bound: moves", at: testLease + testMargin + time.Millisecond, heartbeat: true, wantOwner: "d2", wantEpoch: 3},
		{name: "idempotent", at: testLease + testMargin + 2*time.Millisecond, wantOwner: "d2", wantEpoch: 3},
	}
	for _, s := range steps {
		f.clk.Advance(lastD1.Add(s.at).Sub(f.clk.Now()))
		if s.heartbeat {
			f.grant(t, "d2")
		}
		if s.hintDead {
			f.r.Hint("d1", false)
		}
		f.step(t)
		owner, epoch := f.st.owner(a)
		if owner != s.wantOwner || epoch != s.wantEpoch {
			t.Fatalf("step %q: owner %s@%d, want %s@%d", s.name, owner, epoch, s.wantOwner, s.wantEpoch)
		}
	}
	if diff := cmp.Diff([]*raftlbv1.Command{assignCmd(&raftlbv1.Address{Address: a, Owner: "d2", Epoch: 3})},
		f.st.proposals(), protocmp.Transform()); diff != "" {
		t.Errorf("proposals mismatch (-want +got):\n%s", diff)
	}
	// The old owner comes back: its old epoch is refused, the new owner's granted.
	if l := f.grant(t, "d1", Claim{ip, 2}); len(l.Granted) != 0 {
		t.Errorf("old owner granted %v after the move", l.Granted)
	}
	if l := f.grant(t, "d2", Claim{ip, 3}); len(l.Granted) != 1 {
		t.Errorf("new owner granted %v, want its claim", l.Granted)
	}
}

// TestNewLeaderWaitsFullLease: a new leader does not know its predecessor's
// grants, so it waits a full lease (plus margin) from its own election.
func TestNewLeaderWaitsFullLease(t *testing.T) {
	const a = "198.51.100.10"
	f := newHAFixture(t, vip(a, "", "d1", 5))
	elected := f.clk.Now()
	for _, at := range []time.Duration{0, 500 * time.Millisecond, testLease, testLease + testMargin} {
		f.clk.Advance(elected.Add(at).Sub(f.clk.Now()))
		f.grant(t, "d2")
		f.step(t)
		if owner, _ := f.st.owner(a); owner != "d1" {
			t.Fatalf("moved to %s at election+%v", owner, at)
		}
	}
	f.clk.Advance(time.Millisecond)
	f.grant(t, "d2")
	f.step(t)
	if owner, epoch := f.st.owner(a); owner != "d2" || epoch != 6 {
		t.Fatalf("owner %s@%d after a full lease, want d2@6", owner, epoch)
	}
}

// TestNoTargetNoMove: nobody in touch means nothing moves (a witness never
// takes an address).
func TestNoTargetNoMove(t *testing.T) {
	f := newHAFixture(t, vip("198.51.100.10", "", "d1", 5))
	f.clk.Advance(10 * time.Second)
	f.grant(t, "w1")
	f.step(t)
	if got := f.st.proposals(); len(got) != 0 {
		t.Fatalf("proposed %v with no full director in touch", got)
	}
}

// TestGrantFencedDuringReassignment: once the reassigner has checked and
// fenced an address, a late request of the old owner is refused.
func TestGrantFencedDuringReassignment(t *testing.T) {
	f := newHAFixture(t, vip("198.51.100.10", "", "d1", 2))
	ip := mustAddr(t, "198.51.100.10")
	f.clk.Advance(testLease + testMargin + time.Millisecond)
	ok, unfence := f.g.fenceIfFree([]Claim{{ip, 2}}, 3, f.clk.Now(), true)
	defer unfence()
	if len(ok) != 1 {
		t.Fatalf("fenceIfFree = %v, want the claim", ok)
	}
	if l := f.grant(t, "d1", Claim{ip, 2}); len(l.Granted) != 0 {
		t.Fatalf("fenced address granted: %v", l.Granted)
	}
	unfence()
	if l := f.grant(t, "d1", Claim{ip, 2}); len(l.Granted) != 1 {
		t.Fatalf("unfenced address refused: %v", l)
	}
}

// TestNATGroupWaitsForAllMembers: the group moves as a whole, only once
// every member's lease has surely run out.
func TestNATGroupWaitsForAllMembers(t *testing.T) {
	f := newHAFixture(t, gw("203.0.113.254", "", "d1", 2), vip("198.51.100.10", "", "d1", 4))
	f.st.services = []*raftlbv1.VirtualService{{Key: &raftlbv1.ServiceKey{Vip: "198.51.100.10"},
		Realservers: []*raftlbv1.Realserver{{Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT}}}}
	f.clk.Advance(testLease + testMargin + time.Millisecond)
	f.grant(t, "d1", Claim{mustAddr(t, "198.51.100.10"), 4}) // d1 renews one member only
	f.clk.Advance(time.Second)
	f.grant(t, "d2")
	f.step(t)
	if got := f.st.proposals(); len(got) != 0 {
		t.Fatalf("group moved while a member's lease may hold: %v", got)
	}
	f.clk.Advance(testLease)
	f.grant(t, "d2")
	f.step(t)
	for _, a := range []string{"203.0.113.254", "198.51.100.10"} {
		if owner, _ := f.st.owner(a); owner != "d2" {
			t.Errorf("%s owned by %q, want d2", a, owner)
		}
	}
}

// TestReleaseSkipsWait: a leaving owner that released its addresses has
// them reassigned at once.
func TestReleaseSkipsWait(t *testing.T) {
	f := newHAFixture(t, vip("198.51.100.10", "d1", "d1", 2))
	ip := mustAddr(t, "198.51.100.10")
	f.clk.Advance(10 * time.Millisecond)
	f.grant(t, "d1", Claim{ip, 2})
	f.grant(t, "d2")
	if err := f.g.Release(context.Background(), "d1", []Claim{{ip, 2}}, true); err != nil {
		t.Fatal(err)
	}
	f.step(t)
	if owner, epoch := f.st.owner("198.51.100.10"); owner != "d2" || epoch != 3 {
		t.Fatalf("owner %s@%d after release, want d2@3", owner, epoch)
	}
}

// TestMove hands an address over gracefully: the owner is told to release
// at its next request and the move commits without waiting the lease out.
func TestMove(t *testing.T) {
	f := newHAFixture(t, vip("198.51.100.10", "d1", "d1", 2))
	ip := mustAddr(t, "198.51.100.10")
	f.grant(t, "d1", Claim{ip, 2})
	f.grant(t, "d2")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.r.Move(ctx, ip, "d2") }()

	var l Lease
	eventually(t, 2*time.Second, "release request", func() bool {
		l = f.grant(t, "d1", Claim{ip, 2})
		return len(l.Release) == 1
	})
	if len(l.Granted) != 0 {
		t.Fatalf("granted %v during a move", l.Granted)
	}
	start := time.Now()
	if err := f.g.Release(ctx, "d1", l.Release, false); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Move: %v", err)
	}
	if waited := time.Since(start); waited > testLease/2 {
		t.Errorf("move took %v after the release; the lease should not be waited out", waited)
	}
	if owner, epoch := f.st.owner("198.51.100.10"); owner != "d2" || epoch != 3 {
		t.Fatalf("owner %s@%d after move, want d2@3", owner, epoch)
	}
}

func TestMoveErrors(t *testing.T) {
	f := newHAFixture(t, vip("198.51.100.10", "d1", "d1", 2))
	ctx := context.Background()
	if err := f.r.Move(ctx, mustAddr(t, "198.51.100.10"), "w1"); !errors.Is(err, ErrNoTarget) {
		t.Errorf("move to witness = %v, want ErrNoTarget", err)
	}
	f.grant(t, "d2")
	if err := f.r.Move(ctx, mustAddr(t, "198.51.100.99"), "d2"); !errors.Is(err, ErrUnknownAddress) {
		t.Errorf("move of unknown address = %v, want ErrUnknownAddress", err)
	}
	f.g.StepDown()
	if err := f.r.Move(ctx, mustAddr(t, "198.51.100.10"), "d2"); !errors.Is(err, ErrNotLeader) {
		t.Errorf("move on follower = %v, want ErrNotLeader", err)
	}
}

// TestMoveAbortsOnLeadershipLoss: a move waiting for the old lease must not
// read a grantor that stepped down as "all free", even while the Raft node
// would still accept the proposal: the move fails with ErrNotLeader and
// proposes nothing.
func TestMoveAbortsOnLeadershipLoss(t *testing.T) {
	const a = "198.51.100.10"
	f := newHAFixture(t, vip(a, "d1", "d1", 2))
	ip := mustAddr(t, a)
	f.grant(t, "d1", Claim{ip, 2})
	f.grant(t, "d2")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.r.Move(ctx, ip, "d2") }()
	eventually(t, 2*time.Second, "release request", func() bool {
		return len(f.grant(t, "d1", Claim{ip, 2}).Release) == 1
	})
	f.g.StepDown()
	if err := <-done; !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Move = %v, want ErrNotLeader", err)
	}
	if got := f.st.proposals(); len(got) != 0 {
		t.Fatalf("proposed %v after losing leadership", got)
	}
	if owner, epoch := f.st.owner(a); owner != "d1" || epoch != 2 {
		t.Fatalf("owner %s@%d, want d1@2", owner, epoch)
	}
}

// TestStaleTermProposesNothing: LeaderCh folds a loss and a new win into one
// value, so the grantor may still hold term 3's bookkeeping while Raft leads
// term 5 (whose barrier has not run). What the reassigner judges from that
// bookkeeping must not commit in term 5.
func TestStaleTermProposesNothing(t *testing.T) {
	const a = "198.51.100.10"
	f := newHAFixture(t, vip(a, "d1", "d1", 2))
	ip := mustAddr(t, a)
	f.grant(t, "d1", Claim{ip, 2})
	f.clk.Advance(testLease + testMargin + time.Millisecond)
	f.grant(t, "d2")
	f.leader.set(5, nil)
	if _, err := f.r.Step(context.Background(), f.clk.Now()); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Step = %v, want ErrNotLeader", err)
	}
	if err := f.r.Move(context.Background(), ip, "d2"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Move = %v, want ErrNotLeader", err)
	}
	if got := f.st.proposals(); len(got) != 0 {
		t.Fatalf("proposed %v in a later term", got)
	}
}
