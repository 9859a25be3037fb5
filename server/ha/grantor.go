package ha

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// Leader is the Raft node, as the grantor needs it.
type Leader interface {
	// VerifyLeader returns this node's current term once a quorum has just
	// confirmed that it is still the leader (raft.VerifyLeader), and an
	// error otherwise. It must fail while leadership of that term has not
	// been established yet (the barrier after winning has not completed),
	// so that every entry committed in earlier terms is applied before a
	// grant reads the assignments.
	VerifyLeader(ctx context.Context) (term uint64, err error)
}

// Assignments reads the replicated assignments (fsm.FSM.Addresses).
type Assignments func() []*raftlbv1.Address

// GrantorConfig tunes the leader's lease bookkeeping.
type GrantorConfig struct {
	// LeaseDuration is how long a granted lease lets the owner answer,
	// measured by the owner from before it sent its request.
	LeaseDuration time.Duration
	// Margin is added to every "surely expired" bound, for clock-rate
	// differences between hosts and scheduling delays; default
	// max(LeaseDuration/10, 50ms).
	Margin time.Duration
	// Now is the monotonic clock; default time.Now.
	Now func() time.Time
}

func (c *GrantorConfig) defaults() {
	if c.LeaseDuration <= 0 {
		c.LeaseDuration = 1500 * time.Millisecond
	}
	if c.Margin <= 0 {
		c.Margin = max(c.LeaseDuration/10, 50*time.Millisecond)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Lease is the answer to a lease request.
type Lease struct {
	// Granted are the claims the leader extended.
	Granted []Claim
	// Release are claims the leader asks the owner to hand over now: stop
	// answering, flush connection sync, then release them.
	Release []Claim
	// Duration counts from before the owner sent its request.
	Duration time.Duration
}

type grantRecord struct {
	owner string
	epoch uint64
	at    time.Time
}

// Grantor is the leader's side of address leases: it grants them and keeps
// the bookkeeping that tells the reassigner when a lease has surely expired.
//
// A lease is granted only (a) by a node that a quorum has just confirmed as
// leader of the term whose leadership it established, and (b) for a claim
// that matches the replicated assignment (owner and epoch), read after that
// confirmation. A follower's local state is never consulted.
//
// When is a lease surely over? A grant this leader issued at t lasts until at
// most t + LeaseDuration on the owner (the owner counts from before it sent
// the request, which is before t). Grants by earlier leaders are unknown
// here, but each was issued after a quorum confirmed that leader, and this
// node's election needed a quorum that had already left that leader's term;
// the two quorums intersect, so every earlier grant was issued before this
// node became leader at leaderSince. Hence no lease on an address can be
// valid after max(lastGrant[address], leaderSince) + LeaseDuration, plus
// Margin for clock rates. (The voters that elected this node had lost the old
// leader at least HeartbeatTimeout earlier, so LeaseDuration -
// HeartbeatTimeout would be a tighter bound; it does not hold for a
// leadership transfer, which skips that wait, so the grantor uses the safe
// one and a failover after leader loss costs at most one lease duration.)
//
// The same bound guards an epoch the state machine set directly after this
// node became leader (an address created again, a NAT gateway declared
// anew): an earlier leader may have granted the address to another owner,
// so such an epoch is granted only after leaderSince + LeaseDuration +
// Margin. Epochs known at election and those this leader's reassigner
// committed (after waiting the bounds out) are granted at once.
//
// Concurrency: Grant and Release are called from gRPC handlers, the rest
// from the reassigner's goroutine; the bookkeeping sits behind one mutex.
// Grant records its grant under the same lock under which the reassigner
// checks "surely expired" and fences the addresses it is about to move, so a
// grant either happens before the check (and delays the move) or is refused.
type Grantor struct {
	cfg    GrantorConfig
	leader Leader
	state  Assignments
	log    *slog.Logger
	m      *Metrics

	mu         sync.Mutex
	term       uint64 // 0 while not leader
	since      time.Time
	grants     map[netip.Addr]grantRecord
	lastGrant  map[string]time.Time // per director
	contact    map[string]time.Time // per director: last lease request
	released   map[netip.Addr]uint64
	leaving    map[string]bool
	fenced     map[netip.Addr]int
	releaseReq map[netip.Addr]uint64
	// known holds each address's epoch at BecomeLeader. An epoch the state
	// machine set directly after that (an address created, or the NAT gateway
	// declared anew) may have an earlier leader's lease of another owner
	// still running, which only the since bound rules out.
	known   map[netip.Addr]uint64
	vetted  map[netip.Addr]uint64 // epochs this leader's reassigner committed
	changed chan struct{}
}

// NewGrantor returns a grantor that is not leader until BecomeLeader.
func NewGrantor(cfg GrantorConfig, leader Leader, state Assignments, log *slog.Logger, m *Metrics) *Grantor {
	cfg.defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Grantor{cfg: cfg, leader: leader, state: state, log: log.With("component", "lease-grantor"), m: m,
		changed: make(chan struct{})}
	g.resetLocked()
	return g
}

func (g *Grantor) resetLocked() {
	g.grants = make(map[netip.Addr]grantRecord)
	g.lastGrant = make(map[string]time.Time)
	g.contact = make(map[string]time.Time)
	g.released = make(map[netip.Addr]uint64)
	g.leaving = make(map[string]bool)
	g.fenced = make(map[netip.Addr]int)
	g.releaseReq = make(map[netip.Addr]uint64)
	g.known = make(map[netip.Addr]uint64)
	g.vetted = make(map[netip.Addr]uint64)
}

func (g *Grantor) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// Changed is closed at the next change of leadership, contact or release.
func (g *Grantor) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// LeaseDuration is the configured lease duration.
func (g *Grantor) LeaseDuration() time.Duration { return g.cfg.LeaseDuration }

// BecomeLeader starts granting for term. Call it once leadership of term is
// established (after the barrier), with a time taken after winning: a later
// time only makes the bounds more conservative. All bookkeeping restarts.
func (g *Grantor) BecomeLeader(term uint64, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.resetLocked()
	g.term, g.since = term, now
	for ip, a := range addressMap(g.state()) {
		g.known[ip] = a.GetEpoch()
	}
	g.notifyLocked()
	g.log.Info("granting leases", "term", term)
}

// StepDown stops granting (leadership lost or shutting down).
func (g *Grantor) StepDown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.term != 0 {
		g.log.Info("stopped granting leases", "term", g.term)
	}
	g.term = 0
	g.notifyLocked()
}

// IsLeader reports whether BecomeLeader was called and StepDown was not.
func (g *Grantor) IsLeader() bool {
	return g.Term() != 0
}

// Term is the term this node grants in; 0 while it does not.
func (g *Grantor) Term() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.term
}

// Grant extends directorID's leases on the claims that match the replicated
// assignment; the others are left out. Every call, granted or not, counts as
// contact from the director (its liveness for placement) and ends its
// "leaving" state.
func (g *Grantor) Grant(ctx context.Context, directorID string, claims []Claim) (Lease, error) {
	term, err := g.leader.VerifyLeader(ctx)
	if err != nil {
		return Lease{}, fmt.Errorf("verify leadership: %w: %w", ErrNotLeader, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.term == 0 || term != g.term {
		return Lease{}, fmt.Errorf("grant lease in term %d: %w", term, ErrNotLeader)
	}
	now := g.cfg.Now()
	g.contact[directorID] = now
	if g.leaving[directorID] {
		delete(g.leaving, directorID)
		g.notifyLocked()
	}
	cur := addressMap(g.state())
	out := Lease{Duration: g.cfg.LeaseDuration}
	for _, c := range sortClaims(claims) {
		a := cur[c.Address]
		switch {
		case a == nil || a.GetOwner() != directorID || a.GetEpoch() != c.Epoch:
		case g.released[c.Address] == c.Epoch:
		case g.releaseReq[c.Address] == c.Epoch:
			out.Release = append(out.Release, c)
			continue
		case g.fenced[c.Address] > 0:
		case g.heldByOtherLocked(c.Address, directorID, now):
		case g.unvettedLocked(c) && !now.After(g.boundLocked(time.Time{})):
		default:
			g.grants[c.Address] = grantRecord{owner: directorID, epoch: c.Epoch, at: now}
			g.lastGrant[directorID] = now
			out.Granted = append(out.Granted, c)
			continue
		}
		g.m.inc(func(m *Metrics) prometheus.Counter { return m.LeaseRefusals }, 1)
	}
	g.m.inc(func(m *Metrics) prometheus.Counter { return m.LeaseGrants }, len(out.Granted))
	return out, nil
}

// heldByOtherLocked reports whether this leader granted addr to another
// director whose lease may still be valid at now (and was not released). The
// reassigner never assigns such an address, but an owner may change in other
// ways (an address deleted and created again, or leaving and joining the
// NAT group); this keeps even those from giving two directors a lease.
func (g *Grantor) heldByOtherLocked(addr netip.Addr, directorID string, now time.Time) bool {
	rec, ok := g.grants[addr]
	if !ok || rec.owner == directorID {
		return false
	}
	if e, ok := g.released[addr]; ok && e == rec.epoch {
		return false
	}
	return !now.After(g.boundLocked(rec.at))
}

// unvettedLocked reports whether c's epoch was set after BecomeLeader by
// something other than this leader's reassigner, which waits the bounds out
// before it assigns.
func (g *Grantor) unvettedLocked(c Claim) bool {
	if e, ok := g.known[c.Address]; ok && e == c.Epoch {
		return false
	}
	if e, ok := g.vetted[c.Address]; ok && e == c.Epoch {
		return false
	}
	return true
}

// vet records epochs the reassigner is about to commit once no older lease
// can be valid; call it while the addresses are fenced.
func (g *Grantor) vet(as []*raftlbv1.Address) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, a := range as {
		if ip, err := netip.ParseAddr(a.GetAddress()); err == nil {
			g.vetted[ip] = a.GetEpoch()
		}
	}
}

// Release records that directorID stopped answering for the claims (each at
// the epoch the replicated state still assigns to it) and that its
// connection sync has committed, so the addresses may move at once. leaving
// means it is shutting down: it is not a placement target until it asks for
// a lease again.
func (g *Grantor) Release(ctx context.Context, directorID string, claims []Claim, leaving bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.term == 0 {
		return fmt.Errorf("release lease: %w", ErrNotLeader)
	}
	cur := addressMap(g.state())
	n := 0
	for _, c := range claims {
		if a := cur[c.Address]; a != nil && a.GetOwner() == directorID && a.GetEpoch() == c.Epoch {
			g.released[c.Address] = c.Epoch
			n++
			g.log.Info("lease released", "vip", c.Address, "owner", directorID, "epoch", c.Epoch)
		}
	}
	if leaving {
		g.leaving[directorID] = true
	}
	g.m.inc(func(m *Metrics) prometheus.Counter { return m.LeaseReleases }, n)
	g.notifyLocked()
	return nil
}

// SurelyExpired reports whether every lease the director may hold, from this
// leader or an earlier one, has run out at now.
func (g *Grantor) SurelyExpired(directorID string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.term != 0 && now.After(g.boundLocked(g.lastGrant[directorID]))
}

// Reachable reports whether the director asked this leader for a lease
// within the last lease duration and is not leaving: a director that may
// take addresses.
func (g *Grantor) Reachable(directorID string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.contact[directorID]
	return g.term != 0 && ok && !g.leaving[directorID] && now.Sub(t) <= g.cfg.LeaseDuration
}

// boundLocked is when a lease granted at last (or by an earlier leader)
// has surely run out.
func (g *Grantor) boundLocked(last time.Time) time.Time {
	if last.Before(g.since) {
		last = g.since
	}
	return last.Add(g.cfg.LeaseDuration + g.cfg.Margin)
}

// freeAtLocked is when no lease on c can be valid any more: at once if its
// owner released it at this epoch.
func (g *Grantor) freeAtLocked(c Claim) time.Time {
	if e, ok := g.released[c.Address]; ok && e == c.Epoch {
		return time.Time{}
	}
	return g.boundLocked(g.grants[c.Address].at)
}

// Free reports whether no lease on any of the claims can be valid at now,
// and if not, when the last one surely runs out. It fails with ErrNotLeader
// unless this node still grants in term: bookkeeping of another term says
// nothing about the leases.
func (g *Grantor) Free(claims []Claim, term uint64, now time.Time) (bool, time.Time, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.term == 0 || g.term != term {
		return false, time.Time{}, fmt.Errorf("check leases in term %d: %w", term, ErrNotLeader)
	}
	free, wait := true, time.Time{}
	for _, c := range claims {
		if at := g.freeAtLocked(c); !now.After(at) {
			free = false
			wait = later(wait, at)
		}
	}
	return free, wait, nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Released reports whether the owner released the address at that epoch.
func (g *Grantor) Released(c Claim) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.released[c.Address]
	return ok && e == c.Epoch
}

// LastGrant is when this leader last granted a lease on the address (zero if
// never).
func (g *Grantor) LastGrant(addr netip.Addr) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.grants[addr].at
}

// fenceIfFree fences the claims that are free at now (all of them or none
// when all is set) so that no grant extends them, and returns them with the
// function that lifts the fence. Check and fence happen under one lock, and
// only while this node still grants in term.
func (g *Grantor) fenceIfFree(claims []Claim, term uint64, now time.Time, all bool) ([]Claim, func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.term == 0 || g.term != term {
		return nil, func() {}
	}
	var ok []Claim
	for _, c := range claims {
		if g.fenced[c.Address] > 0 || !now.After(g.freeAtLocked(c)) {
			if all {
				return nil, func() {}
			}
			continue
		}
		ok = append(ok, c)
	}
	return ok, g.fenceLocked(ok)
}

// fence stops grants on the addresses until the returned function is called.
func (g *Grantor) fence(addrs []netip.Addr) func() {
	g.mu.Lock()
	defer g.mu.Unlock()
	cs := make([]Claim, len(addrs))
	for i, a := range addrs {
		cs[i] = Claim{Address: a}
	}
	return g.fenceLocked(cs)
}

func (g *Grantor) fenceLocked(cs []Claim) func() {
	for _, c := range cs {
		g.fenced[c.Address]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			for _, c := range cs {
				if g.fenced[c.Address]--; g.fenced[c.Address] <= 0 {
					delete(g.fenced, c.Address)
				}
			}
		})
	}
}

func (g *Grantor) isFenced(a netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fenced[a] > 0
}

// requestRelease makes the next lease answers to the owner ask it to hand the
// claims over, until the returned function is called.
func (g *Grantor) requestRelease(cs []Claim) func() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range cs {
		g.releaseReq[c.Address] = c.Epoch
	}
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, c := range cs {
			if g.releaseReq[c.Address] == c.Epoch {
				delete(g.releaseReq, c.Address)
			}
		}
	}
}

// HandleGrantLease serves InternalService.GrantLease; the caller has checked
// that req.director_id is the peer's identity.
func (g *Grantor) HandleGrantLease(ctx context.Context, req *raftlbv1.GrantLeaseRequest) (*raftlbv1.GrantLeaseResponse, error) {
	l, err := g.Grant(ctx, req.GetDirectorId(), ClaimsFromProto(req.GetClaims()))
	if err != nil {
		return nil, err
	}
	return &raftlbv1.GrantLeaseResponse{
		Granted:    ClaimsToProto(l.Granted),
		Release:    ClaimsToProto(l.Release),
		DurationMs: l.Duration.Milliseconds(),
	}, nil
}

// HandleReleaseLease serves InternalService.ReleaseLease; the caller has
// checked that req.director_id is the peer's identity.
func (g *Grantor) HandleReleaseLease(ctx context.Context, req *raftlbv1.ReleaseLeaseRequest) (*raftlbv1.ReleaseLeaseResponse, error) {
	if err := g.Release(ctx, req.GetDirectorId(), ClaimsFromProto(req.GetClaims()), req.GetLeaving()); err != nil {
		return nil, err
	}
	return &raftlbv1.ReleaseLeaseResponse{}, nil
}

func addressMap(as []*raftlbv1.Address) map[netip.Addr]*raftlbv1.Address {
	out := make(map[netip.Addr]*raftlbv1.Address, len(as))
	for _, a := range as {
		if ip, err := netip.ParseAddr(a.GetAddress()); err == nil {
			out[ip] = a
		}
	}
	return out
}
