package server

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// LeaseKeeper keeps the dataplane's lease deadlines for the addresses this
// director answers for; the programs fall silent on an address when its
// deadline passes. Run owns it until ctx ends.
//
// newLeaseKeeper is the one place that chooses the implementation: the
// lease keeper of server/ha (leases granted by the Raft leader) replaces
// the self-renewing one there, or makes it return nil when that keeper is
// run elsewhere (nil runs none).
type LeaseKeeper interface {
	Run(ctx context.Context) error
}

// LeaseSetter is the dataplane's lease gate (*dataplane.Dataplane has it).
type LeaseSetter interface {
	SetLease(addr netip.Addr, deadline time.Time) error
}

// newLeaseKeeper returns the lease keeper of this director's dataplane:
// server/ha's keeper, which holds leases granted by the Raft leader (with
// connection sync beside it; see ha_wiring.go). dp is the same dataplane the
// keeper was bound to in New.
func (d *Director) newLeaseKeeper(LeaseSetter) LeaseKeeper {
	return d.ha.leaseKeeper()
}

// newSelfLeases returns the stand-in that renews leases from this director's
// own copy of the state; kept for tests of the packet path without a
// cluster, never used by a running director.
func (d *Director) newSelfLeases(dp LeaseSetter) LeaseKeeper {
	return &selfLeases{
		id:       d.cfg.ID,
		duration: d.cfg.LeaseDuration,
		src:      d.fsm,
		dp:       dp,
		log:      d.base.With("component", "leases"),
	}
}

// addressSource is the replicated state as the lease keeper reads it.
type addressSource interface {
	Addresses() []*raftlbv1.Address
	Changed() <-chan struct{}
}

// selfLeases extends, every third of the lease duration, the leases of the
// addresses the replicated state assigns to this director, and withdraws
// those it no longer owns at once. It trusts this director's copy of the
// state, which may lag behind the leader's: a stand-in until leases are
// granted by the leader (server/ha), which fences a stalled owner.
type selfLeases struct {
	id       string
	duration time.Duration
	src      addressSource
	dp       LeaseSetter
	log      *slog.Logger

	held map[netip.Addr]bool
}

// Run renews until ctx ends, then withdraws every lease it set.
func (s *selfLeases) Run(ctx context.Context) error {
	s.held = make(map[netip.Addr]bool)
	t := time.NewTicker(s.duration / 3)
	defer t.Stop()
	defer s.withdraw(nil)
	for {
		changed := s.src.Changed()
		s.step(time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
	}
}

// step sets the deadlines of the owned addresses to now plus the duration
// and withdraws the leases of the others.
func (s *selfLeases) step(now time.Time) {
	owned := make(map[netip.Addr]bool)
	for _, a := range s.src.Addresses() {
		addr, err := netip.ParseAddr(a.GetAddress())
		if err != nil || a.GetOwner() != s.id {
			continue
		}
		owned[addr] = true
		if err := s.dp.SetLease(addr, now.Add(s.duration)); err != nil {
			s.log.Warn("extend lease", "addr", addr, "err", err)
			continue
		}
		if !s.held[addr] {
			s.log.Info("answering for address", "addr", addr, "kind", a.GetKind().String(), "epoch", a.GetEpoch())
		}
		s.held[addr] = true
	}
	s.withdraw(owned)
}

// withdraw silences every held address not in keep.
func (s *selfLeases) withdraw(keep map[netip.Addr]bool) {
	for addr := range s.held {
		if keep[addr] {
			continue
		}
		if err := s.dp.SetLease(addr, time.Time{}); err != nil {
			s.log.Warn("withdraw lease", "addr", addr, "err", err)
			continue
		}
		s.log.Info("no longer answering for address", "addr", addr)
		delete(s.held, addr)
	}
}
