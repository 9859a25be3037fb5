package ha

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

const (
	testLease  = 1500 * time.Millisecond
	testMargin = 150 * time.Millisecond
)

type haFixture struct {
	clk    *fakeClock
	leader *fakeLeader
	st     *fakeState
	g      *Grantor
	r      *Reassigner
}

func newHAFixture(t *testing.T, addrs ...*raftlbv1.Address) *haFixture {
	t.Helper()
	f := &haFixture{clk: newFakeClock(), leader: &fakeLeader{term: 3}, st: newFakeState(dirs("d1", "d2", "w1"), addrs...)}
	f.g = NewGrantor(GrantorConfig{LeaseDuration: testLease, Margin: testMargin, Now: f.clk.Now}, f.leader, f.st.Addresses, nil, nil)
	f.r = NewReassigner(ReassignerConfig{Now: f.clk.Now}, f.g, f.st, termProposer{f.st, f.leader}, nil, nil)
	f.g.BecomeLeader(3, f.clk.Now())
	return f
}

func (f *haFixture) grant(t *testing.T, id string, claims ...Claim) Lease {
	t.Helper()
	l, err := f.g.Grant(context.Background(), id, claims)
	if err != nil {
		t.Fatalf("grant %s: %v", id, err)
	}
	return l
}

func (f *haFixture) step(t *testing.T) {
	t.Helper()
	if _, err := f.r.Step(context.Background(), f.clk.Now()); err != nil {
		t.Fatalf("step: %v", err)
	}
}

func TestGrant(t *testing.T) {
	a10, a11 := mustAddr(t, "198.51.100.10"), mustAddr(t, "198.51.100.11")
	tests := []struct {
		name     string
		director string
		claims   []Claim
		verify   error
		term     uint64
		want     []Claim
		wantErr  error
	}{
		{name: "matching claims", director: "d1", claims: []Claim{{a11, 4}, {a10, 2}}, term: 3,
			want: []Claim{{a10, 2}, {a11, 4}}},
		{name: "wrong epoch", director: "d1", claims: []Claim{{a10, 1}, {a11, 4}}, term: 3, want: []Claim{{a11, 4}}},
		{name: "not the owner", director: "d2", claims: []Claim{{a10, 2}}, term: 3},
		{name: "verify fails", director: "d1", claims: []Claim{{a10, 2}}, term: 3, verify: errors.New("no quorum"), wantErr: ErrNotLeader},
		{name: "term not established", director: "d1", claims: []Claim{{a10, 2}}, term: 4, wantErr: ErrNotLeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newHAFixture(t, vip("198.51.100.10", "", "d1", 2), vip("198.51.100.11", "", "d1", 4))
			f.leader.set(tt.term, tt.verify)
			l, err := f.g.Grant(context.Background(), tt.director, tt.claims)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Grant error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(tt.want, l.Granted, cmpopts.EquateComparable(Claim{}), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("granted mismatch (-want +got):\n%s", diff)
			}
			if l.Duration != testLease {
				t.Errorf("duration = %v, want %v", l.Duration, testLease)
			}
		})
	}
}

func TestGrantNotLeader(t *testing.T) {
	f := newHAFixture(t, vip("198.51.100.10", "", "d1", 2))
	f.g.StepDown()
	if _, err := f.g.Grant(context.Background(), "d1", []Claim{{mustAddr(t, "198.51.100.10"), 2}}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Grant after StepDown = %v, want ErrNotLeader", err)
	}
}

func TestSurelyExpired(t *testing.T) {
	f := newHAFixture(t, vip("198.51.100.10", "", "d1", 2))
	// A new leader knows nothing of its predecessor's grants: a full lease
	// from its own election.
	f.clk.Advance(testLease + testMargin)
	if f.g.SurelyExpired("d1", f.clk.Now()) {
		t.Fatal("expired exactly at the bound")
	}
	f.clk.Advance(time.Millisecond)
	if !f.g.SurelyExpired("d1", f.clk.Now()) {
		t.Fatal("not expired after leaderSince + lease + margin")
	}
	f.grant(t, "d1", Claim{mustAddr(t, "198.51.100.10"), 2})
	tg := f.clk.Now()
	if f.g.SurelyExpired("d1", tg.Add(testLease+testMargin)) {
		t.Fatal("expired before lastGrant + lease + margin")
	}
	if !f.g.SurelyExpired("d1", tg.Add(testLease+testMargin+time.Millisecond)) {
		t.Fatal("not expired after lastGrant + lease + margin")
	}
}

// TestGrantHeldByOther checks the grantor's own fence: an address this
// leader granted to one director is not granted to another until that lease
// has surely run out or was released, whatever the replicated state says.
func TestGrantHeldByOther(t *testing.T) {
	a := mustAddr(t, "198.51.100.10")
	f := newHAFixture(t, vip("198.51.100.10", "", "d1", 2))
	f.grant(t, "d1", Claim{a, 2})
	f.st.setOwner("198.51.100.10", "d2") // e.g. deleted and created again elsewhere
	if l := f.grant(t, "d2", Claim{a, 3}); len(l.Granted) != 0 {
		t.Fatalf("granted %v to d2 while d1's lease may be valid", l.Granted)
	}
	f.clk.Advance(testLease + testMargin + time.Millisecond)
	if l := f.grant(t, "d2", Claim{a, 3}); len(l.Granted) != 1 {
		t.Fatalf("d2 not granted after d1's lease surely ran out: %v", l)
	}

	// Past the new-leader bound, so only the record of d1's grant counts.
	g := newHAFixture(t, vip("198.51.100.10", "", "d1", 2))
	g.clk.Advance(testLease + testMargin + time.Millisecond)
	g.grant(t, "d1", Claim{a, 2})
	if err := g.g.Release(context.Background(), "d1", []Claim{{a, 2}}, false); err != nil {
		t.Fatal(err)
	}
	g.st.setOwner("198.51.100.10", "d2")
	if l := g.grant(t, "d2", Claim{a, 3}); len(l.Granted) != 1 {
		t.Fatalf("d2 not granted after d1 released: %v", l)
	}
}

// TestGrantWaitsForDirectAssignment: an epoch the state machine set directly
// after this node became leader (an address deleted and created again, a NAT
// gateway declared anew) may coexist with an earlier leader's lease of another
// owner, so it is granted only after the new-leader bound. Epochs known at
// election, and those this leader's reassigner committed, are granted at once.
func TestGrantWaitsForDirectAssignment(t *testing.T) {
	a10, a11 := mustAddr(t, "198.51.100.10"), mustAddr(t, "198.51.100.11")
	f := newHAFixture(t, vip("198.51.100.10", "", "d1", 2), vip("198.51.100.11", "", "d1", 4))
	f.clk.Advance(10 * time.Millisecond)
	if l := f.grant(t, "d1", Claim{a11, 4}); len(l.Granted) != 1 {
		t.Fatalf("epoch known at election refused: %v", l)
	}
	if err := f.g.Release(context.Background(), "d1", []Claim{{a11, 4}}, false); err != nil {
		t.Fatal(err)
	}
	f.grant(t, "d2")
	f.step(t)
	if l := f.grant(t, "d2", Claim{a11, 5}); len(l.Granted) != 1 {
		t.Fatalf("epoch the reassigner committed refused: %v", l)
	}

	// 198.51.100.10 deleted and created again for d2 by the state machine.
	f.st.mu.Lock()
	f.st.addrs[0] = vip("198.51.100.10", "", "d2", 40)
	f.st.mu.Unlock()
	elected := f.clk.Now().Add(-10 * time.Millisecond)
	for _, at := range []time.Duration{20 * time.Millisecond, testLease, testLease + testMargin} {
		f.clk.Advance(elected.Add(at).Sub(f.clk.Now()))
		if l := f.grant(t, "d2", Claim{a10, 40}); len(l.Granted) != 0 {
			t.Fatalf("direct assignment granted at election+%v: %v", at, l.Granted)
		}
	}
	f.clk.Advance(time.Millisecond)
	if l := f.grant(t, "d2", Claim{a10, 40}); len(l.Granted) != 1 {
		t.Fatalf("direct assignment refused after the new-leader bound: %v", l)
	}
}
