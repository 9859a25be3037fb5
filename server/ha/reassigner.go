package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
)

// Proposer commits a command through Raft.
type Proposer interface {
	Propose(ctx context.Context, cmd *raftlbv1.Command) (*raftlbv1.Result, error)
}

// TermProposer is the reassigner's way to commit: on this node only
// (raft.Apply, never forwarded to another leader), only while this node
// leads term and has established that leadership (its barrier completed),
// returning once this node's state machine has applied the entry. It fails
// with an error wrapping ErrNotLeader (or raft's) otherwise: the grantor's
// bookkeeping, on which the proposal rests, belongs to term alone.
type TermProposer interface {
	ProposeInTerm(ctx context.Context, term uint64, cmd *raftlbv1.Command) (*raftlbv1.Result, error)
}

// State is the replicated state the reassigner reads; *fsm.FSM has it.
type State interface {
	Addresses() []*raftlbv1.Address
	Directors() []*raftlbv1.Director
	Services() []*raftlbv1.VirtualService
	Changed() <-chan struct{}
}

// ReassignerConfig tunes the reassigner.
type ReassignerConfig struct {
	// Interval is the longest time between two steps; default 250ms.
	Interval time.Duration
	// Now is the monotonic clock; default time.Now.
	Now func() time.Time
}

// Reassigner is the leader's loop that gives addresses of lost owners to
// live directors, once the old leases have surely run out, and performs
// graceful handovers.
//
// Memberlist hints can only make it try sooner (a "dead" hint wakes it and
// keeps the director from being chosen as a target); they never shorten the
// wait for a lease to run out, and a "dead" director that keeps renewing
// keeps its addresses.
type Reassigner struct {
	cfg   ReassignerConfig
	g     *Grantor
	st    State
	p     TermProposer
	log   *slog.Logger
	m     *Metrics
	kickC chan struct{}

	mu   sync.Mutex
	dead map[string]bool
}

// NewReassigner returns a reassigner; it acts only while g is leader.
func NewReassigner(cfg ReassignerConfig, g *Grantor, st State, p TermProposer, log *slog.Logger, m *Metrics) *Reassigner {
	if cfg.Interval <= 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reassigner{cfg: cfg, g: g, st: st, p: p, log: log.With("component", "reassigner"), m: m,
		kickC: make(chan struct{}, 1), dead: make(map[string]bool)}
}

// Hint passes on memberlist's view of a director (NotifyJoin: alive,
// NotifyLeave: dead) and wakes the loop.
func (r *Reassigner) Hint(directorID string, alive bool) {
	r.mu.Lock()
	if alive {
		delete(r.dead, directorID)
	} else {
		r.dead[directorID] = true
	}
	r.mu.Unlock()
	r.kick()
}

func (r *Reassigner) kick() {
	select {
	case r.kickC <- struct{}{}:
	default:
	}
}

func (r *Reassigner) hintedDead(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dead[id]
}

// Run steps until ctx ends: after every change of the replicated state or of
// the grantor's bookkeeping, on a hint, when a waited-for lease runs out, and
// at least every Interval.
func (r *Reassigner) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		stCh, gCh := r.st.Changed(), r.g.Changed()
		next, err := r.Step(ctx, r.cfg.Now())
		if err != nil && ctx.Err() == nil {
			r.log.Warn("reassign addresses", "err", err)
		}
		wait := r.cfg.Interval
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), time.Millisecond))
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-stCh:
			// A Step reads every service; under a burst of writes (connection
			// batches, API calls) step at most every stepCoalesce, which is small
			// next to a lease.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(stepCoalesce):
			}
		case <-gCh:
		case <-r.kickC:
		case <-t.C:
		}
	}
}

// stepCoalesce bounds how often replicated changes trigger a Step.
const stepCoalesce = 20 * time.Millisecond

// Step proposes one AssignAddresses for every address whose owner is lost
// (or released it) and whose old lease has surely run out. It returns when
// the next waited-for lease runs out (zero if none).
func (r *Reassigner) Step(ctx context.Context, now time.Time) (time.Time, error) {
	term := r.g.Term()
	if term == 0 {
		return time.Time{}, nil
	}
	addrs := r.st.Addresses()
	nat := NATVIPs(r.st.Services())
	isNAT := func(a string) bool { return nat[a] }
	view := make([]*raftlbv1.Address, len(addrs))
	cur := make(map[string]*raftlbv1.Address, len(addrs))
	for i, a := range addrs {
		cur[a.GetAddress()] = a
		v := &raftlbv1.Address{Address: a.GetAddress(), Kind: a.GetKind(), PreferredOwner: a.GetPreferredOwner(),
			Owner: a.GetOwner(), Epoch: a.GetEpoch()}
		if ip, err := netip.ParseAddr(a.GetAddress()); err == nil && r.g.Released(Claim{ip, a.GetEpoch()}) {
			v.Owner = "" // its owner gave it up
		}
		view[i] = v
	}
	plan := Plan(r.st.Directors(), view, isNAT, func(id string) bool {
		return r.g.Reachable(id, now) && !r.hintedDead(id)
	})
	var group, rest []Claim
	for _, as := range plan {
		a := cur[as.Address]
		ip, err := netip.ParseAddr(as.Address)
		if err != nil || r.g.isFenced(ip) {
			continue // a handover in progress owns it
		}
		c := Claim{Address: ip, Epoch: a.GetEpoch()}
		if a.GetKind() == raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY || nat[as.Address] {
			group = append(group, c)
		} else {
			rest = append(rest, c)
		}
	}
	var next time.Time
	for _, c := range append(slices.Clone(group), rest...) {
		free, at, err := r.g.Free([]Claim{c}, term, now)
		if err != nil {
			return time.Time{}, nil // leadership moved on; the next term starts afresh
		}
		if !free && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	okGroup, unfenceGroup := r.g.fenceIfFree(group, term, now, true)
	defer unfenceGroup()
	okRest, unfenceRest := r.g.fenceIfFree(rest, term, now, false)
	defer unfenceRest()
	ok := make(map[netip.Addr]bool)
	for _, c := range append(okGroup, okRest...) {
		ok[c.Address] = true
	}
	var out []*raftlbv1.Address
	for _, as := range plan {
		if ip, err := netip.ParseAddr(as.Address); err == nil && ok[ip] {
			out = append(out, &raftlbv1.Address{Address: as.Address, Owner: as.Owner, Epoch: as.Epoch})
		}
	}
	if len(out) == 0 {
		return next, nil
	}
	if err := r.propose(ctx, term, out, cur); err != nil {
		return next, err
	}
	return next, nil
}

// propose commits out in term; the addresses must be fenced.
func (r *Reassigner) propose(ctx context.Context, term uint64, out []*raftlbv1.Address, cur map[string]*raftlbv1.Address) error {
	r.g.vet(out)
	cmd := &raftlbv1.Command{Op: &raftlbv1.Command_AssignAddresses{AssignAddresses: &raftlbv1.AssignAddresses{Addresses: out}}}
	res, err := r.p.ProposeInTerm(ctx, term, cmd)
	if err == nil && res.GetCode() != 0 {
		err = fsm.ResultError(res)
	}
	if err != nil {
		return fmt.Errorf("propose assignment: %w", err)
	}
	done := r.cfg.Now()
	for _, a := range out {
		old := cur[a.GetAddress()]
		r.log.Info("address reassigned", "vip", a.GetAddress(), "from", old.GetOwner(), "to", a.GetOwner(), "epoch", a.GetEpoch())
		if ip, err := netip.ParseAddr(a.GetAddress()); err == nil {
			if last := r.g.LastGrant(ip); !last.IsZero() {
				r.m.observe(func(m *Metrics) prometheus.Histogram { return m.FailoverSeconds }, done.Sub(last))
			}
		}
	}
	r.m.inc(func(m *Metrics) prometheus.Counter { return m.Reassignments }, len(out))
	return nil
}

// Move hands addr (with the whole NAT group when it belongs to it) over to
// director to: no more grants to the old owner, which is asked to stop
// answering, flush its connection sync and release; the assignment is
// committed as soon as it has released, or once its lease has surely run
// out, whichever comes first. It returns when the new assignment is applied
// here, or with ctx's error. The leader only.
func (r *Reassigner) Move(ctx context.Context, addr netip.Addr, to string) error {
	term := r.g.Term()
	if term == 0 {
		return fmt.Errorf("move %s: %w", addr, ErrNotLeader)
	}
	if !r.canOwn(to) {
		return fmt.Errorf("move %s to %q: %w", addr, to, ErrNoTarget)
	}
	members, err := r.groupOf(addr)
	if err != nil {
		return err
	}
	unfence := r.g.fence(members)
	defer unfence()
	for {
		done, err := r.moveOnce(ctx, term, addr, members, to)
		if done || err != nil {
			return err
		}
	}
}

// moveOnce asks the owners of members to release them and commits the move
// to to once every lease is surely over, or waits for something to change;
// done reports that Move is over.
func (r *Reassigner) moveOnce(ctx context.Context, term uint64, addr netip.Addr, members []netip.Addr, to string) (bool, error) {
	cur := addressMap(r.st.Addresses())
	var claims []Claim
	for _, ip := range members {
		a := cur[ip]
		if a == nil {
			return true, fmt.Errorf("move %s: %w", ip, ErrUnknownAddress)
		}
		if a.GetOwner() != to {
			claims = append(claims, Claim{Address: ip, Epoch: a.GetEpoch()})
		}
	}
	if len(claims) == 0 {
		return true, nil
	}
	stop := r.g.requestRelease(claims)
	defer stop()
	gCh, stCh := r.g.Changed(), r.st.Changed()
	free, wait, err := r.g.Free(claims, term, r.cfg.Now())
	if err != nil {
		return true, fmt.Errorf("move %s: %w", addr, err)
	}
	if free {
		out := make([]*raftlbv1.Address, len(claims))
		byAddr := make(map[string]*raftlbv1.Address, len(claims))
		for i, c := range claims {
			out[i] = &raftlbv1.Address{Address: c.Address.String(), Owner: to, Epoch: c.Epoch + 1}
			byAddr[c.Address.String()] = cur[c.Address]
		}
		return true, r.propose(ctx, term, out, byAddr)
	}
	t := time.NewTimer(max(time.Until(wait), time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true, fmt.Errorf("move %s: %w", addr, ctx.Err())
	case <-gCh:
	case <-stCh:
	case <-t.C:
	}
	return false, nil
}

// Handover moves every address of director from to director to, or, when
// to is empty, wherever placement puts them with from excluded. For a
// director's own graceful shutdown the keeper's Release is quicker: it
// releases everything in one round trip.
func (r *Reassigner) Handover(ctx context.Context, from, to string) error {
	if !r.g.IsLeader() {
		return fmt.Errorf("hand over %q: %w", from, ErrNotLeader)
	}
	now := r.cfg.Now()
	var view []*raftlbv1.Address
	for _, a := range r.st.Addresses() {
		v := &raftlbv1.Address{Address: a.GetAddress(), Kind: a.GetKind(), PreferredOwner: a.GetPreferredOwner(),
			Owner: a.GetOwner(), Epoch: a.GetEpoch()}
		if v.Owner != from {
			view = append(view, v)
			continue
		}
		if to != "" {
			v.PreferredOwner = to
		}
		v.Owner = ""
		view = append(view, v)
	}
	nat := NATVIPs(r.st.Services())
	plan := Plan(r.st.Directors(), view, func(a string) bool { return nat[a] }, func(id string) bool {
		return id != from && r.g.Reachable(id, now) && !r.hintedDead(id)
	})
	done := make(map[netip.Addr]bool)
	var errs []error
	for _, as := range plan {
		ip, err := netip.ParseAddr(as.Address)
		if err != nil || done[ip] {
			continue
		}
		members, err := r.groupOf(ip)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, m := range members {
			done[m] = true
		}
		if err := r.Move(ctx, ip, as.Owner); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hand over %q: %w", from, err)
	}
	return nil
}

// canOwn reports whether id is a full director that has been in touch.
func (r *Reassigner) canOwn(id string) bool {
	for _, d := range r.st.Directors() {
		if d.GetId() == id {
			return !d.GetWitness() && r.g.Reachable(id, r.cfg.Now()) && !r.hintedDead(id)
		}
	}
	return false
}

// groupOf returns the addresses that move with addr: the NAT group if addr
// is in it, else addr alone.
func (r *Reassigner) groupOf(addr netip.Addr) ([]netip.Addr, error) {
	cur := addressMap(r.st.Addresses())
	a := cur[addr]
	if a == nil {
		return nil, fmt.Errorf("move %s: %w", addr, ErrUnknownAddress)
	}
	nat := NATVIPs(r.st.Services())
	inGroup := func(x *raftlbv1.Address) bool {
		return x.GetKind() == raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY || nat[x.GetAddress()]
	}
	if !inGroup(a) {
		return []netip.Addr{addr}, nil
	}
	var out []netip.Addr
	for ip, x := range cur {
		if inGroup(x) {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}
