package server

import (
	"context"
	"net/netip"
	"time"
)

// LeaseKeeper keeps the dataplane's lease deadlines for the addresses this
// director answers for; the programs fall silent on an address when its
// deadline passes. Run owns it until ctx ends.
//
// newLeaseKeeper is the one place that chooses the implementation: the
// lease keeper of server/ha, holding leases granted by the Raft leader.
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
