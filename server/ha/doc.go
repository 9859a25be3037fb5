// Package ha owns raftlb's high availability logic: where addresses go
// (Plan), the leader's lease grants and bookkeeping (Grantor), the leader's
// loop that moves the addresses of lost owners and performs handovers
// (Reassigner), the owner's lease renewal and gratuitous ARP (Keeper,
// GARPSender) and connection-table replication (Batcher). The components do
// no I/O of their own beyond what their narrow interfaces hand them, and each
// loop exposes a Step taking the time, so failover is tested with a fake
// clock.
//
// # Why there is no split brain
//
// A director answers for an address (ARP, forwarding) only from its
// dataplane, and only until a lease deadline held in a BPF map and compared
// with the kernel's monotonic clock. Nothing else makes it answer: no address
// sits on a kernel interface, so a killed, crashed or stalled director stops
// by itself when the deadline passes.
//
//  1. Leases come from the Raft leader only, after a quorum has just
//     confirmed it (VerifyLeader) in a term whose leadership it has
//     established (its barrier applied every earlier entry), and only for a
//     claim matching the replicated assignment, owner and epoch. A follower's
//     state, which may lag, is never the basis of a grant.
//  2. The owner counts its lease from before it sent the request, so its
//     deadline falls no later than the leader's grant time plus the lease
//     duration.
//  3. The leader changes an owner (a new epoch) only once no lease of the old
//     epoch can be valid: the owner released it, or the bound
//     max(last grant, own election) + lease + margin has passed (see
//     Grantor). The check and a fence that stops further grants happen under
//     one lock, and the fence lasts until the new assignment is applied, so
//     no grant slips in between.
//  4. The proposal is made on the leader only, never forwarded. If it
//     commits, every later leader has applied it before its first grant
//     (point 1), so no leader grants the old epoch again; if it does not
//     commit, nothing moved.
//
// Hence at any moment at most one director holds a valid lease on an
// address. Memberlist only wakes the reassigner and steers the choice of a
// target; it never shortens the wait in point 3. A graceful handover (a move,
// a shutdown) skips that wait because the old owner first silences the
// address, flushes its connection sync and then releases it.
//
// Connection events are replicated only for addresses the director holds a
// valid lease on, so a standby's local expiry or a deposed owner's late
// events never delete what the owner keeps alive; the owner's periodic
// refresh events keep long-lived entries fresh on every replica.
package ha
