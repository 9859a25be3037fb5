package ha

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// recorder is the dataplane, announcer, granter and hooks of a keeper under
// test, writing what happens to one ordered log.
type recorder struct {
	mu          sync.Mutex
	log         []string
	clk         *fakeClock
	down        bool    // the leader is unreachable
	release     bool    // the leader asks for a handover
	refuse      bool    // the leader grants nothing
	failSilence bool    // silencing an address fails
	failRelease int     // how many more ReleaseLease calls fail
	released    []Claim // what ReleaseLease got
	leaving     bool
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.log
	r.log = nil
	return out
}

func (r *recorder) SetLease(addr netip.Addr, deadline time.Time) error {
	if deadline.IsZero() {
		r.mu.Lock()
		fail := r.failSilence
		r.mu.Unlock()
		if fail {
			r.add("silence %s failed", addr)
			return errors.New("map update failed")
		}
		r.add("silence %s", addr)
	} else {
		r.add("lease %s +%v", addr, deadline.Sub(r.clk.Now()))
	}
	return nil
}

func (r *recorder) Announce(_ context.Context, addr netip.Addr, kind raftlbv1.AddressKind) error {
	r.add("garp %s", addr)
	return nil
}

func (r *recorder) GrantLease(_ context.Context, claims []Claim) (Lease, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return Lease{}, errors.New("no leader")
	}
	l := Lease{Duration: testLease}
	switch {
	case r.release:
		l.Release = claims
	case !r.refuse:
		l.Granted = claims
	}
	return l, nil
}

func (r *recorder) ReleaseLease(_ context.Context, claims []Claim, leaving bool) error {
	r.add("release %v leaving=%v", claims, leaving)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failRelease > 0 {
		r.failRelease--
		return errors.New("deadline exceeded")
	}
	return nil
}

func (r *recorder) set(fn func(r *recorder)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(r)
}

func newTestKeeper(t *testing.T, st *fakeState) (*Keeper, *recorder, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	rec := &recorder{clk: clk}
	k := NewKeeper(KeeperConfig{
		ID: "d2", GARPCount: 3, GARPInterval: 100 * time.Millisecond, GARPRefresh: 5 * time.Second, Now: clk.Now,
		Ready: func(context.Context) error { rec.add("ready"); return nil },
		Flush: func(context.Context) error { rec.add("flush"); return nil },
	}, st, rec, rec, rec, nil, nil)
	return k, rec, clk
}

func TestKeeperTakeover(t *testing.T) {
	const a = "198.51.100.10"
	st := newFakeState(dirs("d1", "d2"), vip(a, "", "d1", 2))
	k, rec, clk := newTestKeeper(t, st)
	ctx := context.Background()
	ip := mustAddr(t, a)

	type step struct {
		name   string
		before func()
		after  time.Duration // advance the clock before the step
		want   []string
		owns   bool
	}
	steps := []step{
		{name: "not ours: heartbeat only", want: nil},
		{name: "assigned: ready, lease, then garp", before: func() { st.setOwner(a, "d2") },
			want: []string{"ready", "lease 198.51.100.10 +1.5s", "garp 198.51.100.10"}, owns: true},
		{name: "burst continues", after: 100 * time.Millisecond, want: []string{"garp 198.51.100.10"}, owns: true},
		{name: "renewal, last of burst", after: 400 * time.Millisecond,
			want: []string{"lease 198.51.100.10 +1.5s", "garp 198.51.100.10"}, owns: true},
		{name: "quiet until refresh", after: time.Second, want: []string{"lease 198.51.100.10 +1.5s"}, owns: true},
		{name: "partition: renewals fail", before: func() { rec.mu.Lock(); rec.down = true; rec.mu.Unlock() },
			after: 500 * time.Millisecond, want: nil, owns: true},
		{name: "lease lapses: no garp", after: 1500 * time.Millisecond, want: nil, owns: false},
		{name: "healed: granted again, fresh burst", before: func() { rec.mu.Lock(); rec.down = false; rec.mu.Unlock() },
			after: 100 * time.Millisecond, want: []string{"lease 198.51.100.10 +1.5s", "garp 198.51.100.10"}, owns: true},
		{name: "demoted: silenced at once", before: func() { st.setOwner(a, "d1") },
			want: []string{"silence 198.51.100.10"}, owns: false},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		now := clk.Advance(s.after)
		k.Step(ctx, now)
		if diff := cmp.Diff(s.want, rec.take()); diff != "" {
			t.Fatalf("step %q (-want +got):\n%s", s.name, diff)
		}
		if got := k.Owns(ip); got != s.owns {
			t.Fatalf("step %q: Owns = %v, want %v", s.name, got, s.owns)
		}
	}
}

func TestKeeperNoGARPWithoutLease(t *testing.T) {
	const a = "198.51.100.10"
	st := newFakeState(dirs("d2"), vip(a, "", "d2", 2))
	k, rec, clk := newTestKeeper(t, st)
	rec.refuse = true
	for range 5 {
		k.Step(context.Background(), clk.Advance(200*time.Millisecond))
	}
	for _, l := range rec.take() {
		if l == "garp "+a || l == "lease "+a+" +1.5s" {
			t.Fatalf("%q without a granted lease", l)
		}
	}
}

func TestKeeperHandoverOnRequest(t *testing.T) {
	const a = "198.51.100.10"
	st := newFakeState(dirs("d2"), vip(a, "", "d2", 2))
	k, rec, clk := newTestKeeper(t, st)
	ctx := context.Background()
	k.Step(ctx, clk.Now())
	rec.take()
	rec.release = true
	k.Step(ctx, clk.Advance(500*time.Millisecond))
	want := []string{"silence 198.51.100.10", "flush", "release [{198.51.100.10 2}] leaving=false"}
	if diff := cmp.Diff(want, rec.take()); diff != "" {
		t.Fatalf("handover (-want +got):\n%s", diff)
	}
	// It does not claim the released epoch again; it only repeats the
	// release until the new assignment is committed.
	rec.release = false
	k.Step(ctx, clk.Advance(500*time.Millisecond))
	if diff := cmp.Diff([]string{"release [{198.51.100.10 2}] leaving=false"}, rec.take()); diff != "" {
		t.Fatalf("after release (-want +got):\n%s", diff)
	}
}

func TestKeeperRelease(t *testing.T) {
	st := newFakeState(dirs("d2"), vip("198.51.100.10", "", "d2", 2), gw("203.0.113.254", "", "d2", 7))
	k, rec, _ := newTestKeeper(t, st)
	k.cfg.Now = time.Now
	rec.clk = &fakeClock{t: time.Now()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, 5*time.Second, "lease", func() bool { return k.Owns(mustAddr(t, "198.51.100.10")) })
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if err := k.Release(rctx); err != nil {
		t.Fatal(err)
	}
	if k.Owns(mustAddr(t, "198.51.100.10")) {
		t.Fatal("still owns after release")
	}
	var tail []string
	for _, l := range rec.take() {
		if l == "flush" || strings.HasPrefix(l, "silence") || strings.HasPrefix(l, "release") {
			tail = append(tail, l)
		}
	}
	want := []string{"silence 198.51.100.10", "silence 203.0.113.254", "flush",
		"release [{198.51.100.10 2} {203.0.113.254 7}] leaving=true"}
	if diff := cmp.Diff(want, tail); diff != "" {
		t.Fatalf("release (-want +got):\n%s", diff)
	}
}

// TestKeeperReannounce checks that a re-announcement (a peer rejoined) sends
// a fresh burst for addresses with a valid lease, and nothing for a lapsed one.
func TestKeeperReannounce(t *testing.T) {
	const a = "198.51.100.10"
	st := newFakeState(dirs("d2"), vip(a, "", "d2", 2))
	k, rec, clk := newTestKeeper(t, st)
	ctx := context.Background()
	for range 4 {
		k.Step(ctx, clk.Advance(100*time.Millisecond))
	}
	rec.take()
	k.burstAll(clk.Now())
	k.Step(ctx, clk.Now())
	k.Step(ctx, clk.Advance(100*time.Millisecond))
	k.Step(ctx, clk.Advance(100*time.Millisecond))
	garps := 0
	for _, l := range rec.take() {
		if l == "garp "+a {
			garps++
		}
	}
	if garps != 3 {
		t.Fatalf("re-announcement sent %d gratuitous ARPs, want a burst of 3", garps)
	}

	rec.mu.Lock()
	rec.down = true
	rec.mu.Unlock()
	k.Step(ctx, clk.Advance(2*time.Second)) // the lease lapses
	rec.take()
	k.burstAll(clk.Now())
	k.Step(ctx, clk.Now())
	for _, l := range rec.take() {
		if l == "garp "+a {
			t.Fatalf("re-announced %s without a valid lease", a)
		}
	}
}

// TestKeeperHandoverFlushesWhileOwned: the handover's flush pushes the
// events enqueued before it, which it can only do while the address still
// counts as owned; it is forgotten after the flush.
func TestKeeperHandoverFlushesWhileOwned(t *testing.T) {
	const a = "198.51.100.10"
	ip := mustAddr(t, a)
	st := newFakeState(dirs("d2"), vip(a, "", "d2", 2))
	clk := newFakeClock()
	rec := &recorder{clk: clk}
	var k *Keeper
	b := NewBatcher(BatcherConfig{MaxDelay: time.Hour, Now: clk.Now, Owns: func(v netip.Addr) bool { return k.Owns(v) }}, st, nil, nil)
	ownedAtFlush := false
	k = NewKeeper(KeeperConfig{ID: "d2", GARPCount: 1, Now: clk.Now, Flush: func(ctx context.Context) error {
		ownedAtFlush = k.Owns(ip)
		return b.Flush(ctx)
	}}, st, rec, rec, rec, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	k.Step(ctx, clk.Now())
	if !k.Owns(ip) {
		t.Fatal("no lease")
	}
	e := conn(a, 1, raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED)
	b.Enqueue([]ConnEvent{{Kind: ConnNew, Entry: e}})
	rec.set(func(r *recorder) { r.release = true })
	k.Step(ctx, clk.Advance(500*time.Millisecond))
	if !ownedAtFlush {
		t.Error("address no longer owned during the handover's flush")
	}
	if k.Owns(ip) {
		t.Error("still owned after the handover")
	}
	var got []*raftlbv1.ConnEntry
	for _, c := range st.proposals() {
		got = append(got, c.GetConnectionBatch().GetUpserts()...)
	}
	if diff := cmp.Diff([]*raftlbv1.ConnEntry{e}, got, protocmp.Transform()); diff != "" {
		t.Fatalf("flushed entries (-want +got):\n%s", diff)
	}
}

// TestKeeperFailedSilenceNotReleased: an address the dataplane could not
// silence may still be answered until its deadline, so it is not released;
// it is once silencing works.
func TestKeeperFailedSilenceNotReleased(t *testing.T) {
	const a = "198.51.100.10"
	st := newFakeState(dirs("d2"), vip(a, "", "d2", 2))
	k, rec, clk := newTestKeeper(t, st)
	ctx := context.Background()
	k.Step(ctx, clk.Now())
	rec.take()
	rec.set(func(r *recorder) { r.release, r.failSilence = true, true })
	k.Step(ctx, clk.Advance(500*time.Millisecond))
	if diff := cmp.Diff([]string{"silence 198.51.100.10 failed"}, rec.take()); diff != "" {
		t.Fatalf("failed silence (-want +got):\n%s", diff)
	}
	if !k.Owns(mustAddr(t, a)) {
		t.Error("address whose old deadline holds not reported as owned")
	}
	rec.set(func(r *recorder) { r.failSilence = false })
	k.Step(ctx, clk.Advance(500*time.Millisecond))
	want := []string{"silence 198.51.100.10", "flush", "release [{198.51.100.10 2}] leaving=false"}
	if diff := cmp.Diff(want, rec.take()); diff != "" {
		t.Fatalf("retried handover (-want +got):\n%s", diff)
	}
}

// TestKeeperRepeatsRelease: a release the leader may not have recorded (a
// failed call, a deposed or new leader, a cancelled move) is sent again with
// every renewal until the new assignment is committed, so the address never
// stays dark.
func TestKeeperRepeatsRelease(t *testing.T) {
	const a = "198.51.100.10"
	st := newFakeState(dirs("d1", "d2"), vip(a, "", "d2", 2))
	k, rec, clk := newTestKeeper(t, st)
	ctx := context.Background()
	k.Step(ctx, clk.Now())
	rec.take()
	rec.set(func(r *recorder) { r.release, r.failRelease = true, 1 })
	k.Step(ctx, clk.Advance(500*time.Millisecond))
	rec.set(func(r *recorder) { r.release = false })
	rel := "release [{198.51.100.10 2}] leaving=false"
	if diff := cmp.Diff([]string{"silence 198.51.100.10", "flush", rel}, rec.take()); diff != "" {
		t.Fatalf("handover (-want +got):\n%s", diff)
	}
	steps := []struct {
		name   string
		before func()
		want   []string
	}{
		{name: "lost release sent again", want: []string{rel}},
		{name: "and again: another leader may not know it", want: []string{rel}},
		{name: "new owner committed: done", before: func() { st.setOwner(a, "d1") }},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		k.Step(ctx, clk.Advance(500*time.Millisecond))
		if diff := cmp.Diff(s.want, rec.take()); diff != "" {
			t.Fatalf("step %q (-want +got):\n%s", s.name, diff)
		}
	}
}

// TestKeeperFlushBounded: a flush that cannot commit (no quorum) holds the
// keeper's only goroutine for FlushTimeout at most; the addresses are
// released anyway.
func TestKeeperFlushBounded(t *testing.T) {
	const a = "198.51.100.10"
	st := newFakeState(dirs("d2"), vip(a, "", "d2", 2))
	clk := newFakeClock()
	rec := &recorder{clk: clk}
	k := NewKeeper(KeeperConfig{ID: "d2", GARPCount: 1, Now: clk.Now, FlushTimeout: 10 * time.Millisecond,
		Flush: func(ctx context.Context) error {
			<-ctx.Done()
			rec.add("flush: %v", ctx.Err())
			return ctx.Err()
		}}, st, rec, rec, rec, nil, nil)
	ctx := context.Background()
	k.Step(ctx, clk.Now())
	rec.take()
	rec.set(func(r *recorder) { r.release = true })
	done := make(chan struct{})
	go func() { defer close(done); k.Step(ctx, clk.Advance(500*time.Millisecond)) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("handover blocked on a flush that cannot commit")
	}
	want := []string{"silence 198.51.100.10", "flush: context deadline exceeded", "release [{198.51.100.10 2}] leaving=false"}
	if diff := cmp.Diff(want, rec.take()); diff != "" {
		t.Fatalf("handover (-want +got):\n%s", diff)
	}
}
