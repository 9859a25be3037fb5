package ha

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// fakeLeader is a Raft node whose leadership the test sets.
type fakeLeader struct {
	mu   sync.Mutex
	term uint64
	err  error
}

func (l *fakeLeader) VerifyLeader(context.Context) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term, l.err
}

func (l *fakeLeader) set(term uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.term, l.err = term, err
}

// fakeState is the replicated state; its Propose applies AssignAddresses
// and connection batches like the state machine does.
type fakeState struct {
	mu        sync.Mutex
	addrs     []*raftlbv1.Address
	directors []*raftlbv1.Director
	services  []*raftlbv1.VirtualService
	changed   chan struct{}
	proposed  []*raftlbv1.Command
	fail      error
}

func newFakeState(directors []*raftlbv1.Director, addrs ...*raftlbv1.Address) *fakeState {
	return &fakeState{addrs: addrs, directors: directors, changed: make(chan struct{})}
}

func (s *fakeState) Addresses() []*raftlbv1.Address {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*raftlbv1.Address, len(s.addrs))
	for i, a := range s.addrs {
		out[i] = proto.CloneOf(a)
	}
	return out
}

func (s *fakeState) Directors() []*raftlbv1.Director {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.directors
}

func (s *fakeState) Services() []*raftlbv1.VirtualService {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.services
}

func (s *fakeState) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *fakeState) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeState) setOwner(addr, owner string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.addrs {
		if a.Address == addr {
			a.Owner = owner
			a.Epoch++
		}
	}
	s.notifyLocked()
}

func (s *fakeState) Propose(ctx context.Context, cmd *raftlbv1.Command) (*raftlbv1.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return nil, s.fail
	}
	s.proposed = append(s.proposed, proto.CloneOf(cmd))
	if as := cmd.GetAssignAddresses(); as != nil {
		for _, in := range as.GetAddresses() {
			for _, a := range s.addrs {
				if a.Address == in.GetAddress() {
					if in.GetEpoch() != a.Epoch+1 {
						return nil, errors.New("stale epoch")
					}
					a.Owner, a.Epoch = in.GetOwner(), in.GetEpoch()
				}
			}
		}
		s.notifyLocked()
	}
	return &raftlbv1.Result{}, nil
}

// termProposer commits like Propose while the fake Raft node is still in
// the term asked for, as the director's localProposer does.
type termProposer struct {
	*fakeState
	leader *fakeLeader
}

func (p termProposer) ProposeInTerm(ctx context.Context, term uint64, cmd *raftlbv1.Command) (*raftlbv1.Result, error) {
	if cur, err := p.leader.VerifyLeader(ctx); err != nil || cur != term {
		return nil, fmt.Errorf("propose in term %d (raft term %d): %w", term, cur, ErrNotLeader)
	}
	return p.Propose(ctx, cmd)
}

func (s *fakeState) proposals() []*raftlbv1.Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*raftlbv1.Command(nil), s.proposed...)
}

func (s *fakeState) owner(addr string) (string, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.addrs {
		if a.Address == addr {
			return a.Owner, a.Epoch
		}
	}
	return "", 0
}

func mustAddr(t testing.TB, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func protoSize(m proto.Message) int { return proto.Size(m) }

func testCounter(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
