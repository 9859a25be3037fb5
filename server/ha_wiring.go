package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/ha"
	"github.com/raftlb/raftlb/server/pki"
)

// releaseTimeout bounds the graceful handover at shutdown: silence, flush
// connection sync, release, and wait for the new owner to be committed.
const releaseTimeout = 2 * time.Second

// haNode is the director's share of high availability (package ha): on
// every node the lease grantor, which acts while this node leads, and the
// reassigner; on a full director (one with a packet path) also the lease
// keeper with gratuitous ARP, the connection-sync batcher and the installer
// of replicated connections (connsync.go).
type haNode struct {
	d *Director
	m *ha.Metrics
	g *ha.Grantor
	r *ha.Reassigner

	// Full directors only; nil on a witness or without a packet path.
	k    *ha.Keeper
	an   *lazyAnnouncer
	sync *connSync // nil also when the packet path cannot install connections
}

// newHANode prepares what must exist before the state machine: the metrics
// and, on a full director, the connection installer whose hook the state
// machine calls. bind completes it.
func newHANode(d *Director) *haNode {
	h := &haNode{d: d, m: ha.NewMetrics(d.metrics.reg)}
	if pp := d.packetPath(); pp != nil && !d.cfg.Witness {
		if ct, ok := pp.dp.(connTable); ok {
			h.sync = newConnSync(d, ct, h.m)
		} else {
			d.log.Warn("packet path cannot install connections: no connection sync")
		}
	}
	return h
}

// fsmOptions are the state machine options HA needs: the installer's hook.
func (h *haNode) fsmOptions() []fsm.Option {
	if h.sync == nil {
		return nil
	}
	return []fsm.Option{fsm.WithConnectionHook(h.sync.hook)}
}

// bind builds the parts that read the state machine, once it exists.
func (h *haNode) bind() {
	d := h.d
	h.g = ha.NewGrantor(ha.GrantorConfig{LeaseDuration: d.cfg.LeaseDuration}, raftLeader{d}, d.fsm.Addresses, d.base, h.m)
	h.r = ha.NewReassigner(ha.ReassignerConfig{}, h.g, d.fsm, localProposer{d}, d.base, h.m)
	pp := d.packetPath()
	if pp == nil || d.cfg.Witness {
		return
	}
	var flush func(context.Context) error
	if h.sync != nil {
		h.sync.fsm = d.fsm
		flush = h.sync.b.Flush
	}
	h.an = &lazyAnnouncer{front: d.cfg.Iface, inside: d.cfg.InsideIface, log: d.base}
	h.k = ha.NewKeeper(ha.KeeperConfig{
		ID: d.cfg.ID,
		// Four renewals a lease, retried quickly while there is no leader:
		// when the leader dies, a new one is usually established before the
		// leases it granted run out, so the owners keep answering.
		Renewals:     4,
		Retry:        25 * time.Millisecond,
		GARPCount:    d.cfg.GARPCount,
		GARPInterval: d.cfg.GARPInterval,
		GARPRefresh:  d.cfg.GARPRefresh,
		Ready:        h.ready,
		Flush:        flush,
	}, d.fsm, timeoutGranter{
		g: ha.LeaderGranter{ID: d.cfg.ID, Local: h.g, Remote: h.leaderClient},
		// A request that outlives a renewal period is no use: the keeper
		// must not sit on a dead leader.
		timeout: max(d.cfg.LeaseDuration/4, 50*time.Millisecond),
	}, pp.dp, h.an, d.base, h.m)
	if h.sync != nil {
		h.sync.owns = h.k.Owns
	}
}

// runReassigner runs the reassigner until ctx ends; it acts only while this
// node leads.
func (h *haNode) runReassigner(ctx context.Context) {
	if err := h.r.Run(ctx); err != nil {
		h.d.log.Error("reassigner stopped", "err", err)
	}
}

// leaseKeeper is the packet path's lease keeper: the owner side of leases
// granted by the Raft leader, with connection sync beside it.
func (h *haNode) leaseKeeper() LeaseKeeper { return haRunner{h} }

// haRunner runs a full director's keeper, batcher and installer.
type haRunner struct{ h *haNode }

// Run implements LeaseKeeper.
func (r haRunner) Run(ctx context.Context) error {
	h := r.h
	if h.k == nil {
		return nil
	}
	defer h.an.close()
	var wg sync.WaitGroup
	if s := h.sync; s != nil {
		wg.Go(func() {
			if err := s.b.Run(ctx); err != nil {
				s.log.Error("connection batcher stopped", "err", err)
			}
		})
		wg.Go(func() { s.install(ctx) })
	}
	err := h.k.Run(ctx)
	wg.Wait()
	if err != nil {
		return fmt.Errorf("keep leases: %w", err)
	}
	return nil
}

// onConnEvents passes the dataplane's connection events to the batcher.
func (h *haNode) onConnEvents(evs []dataplane.Event) {
	if h.sync != nil {
		h.sync.onEvents(evs)
	}
}

// ready returns once the dataplane holds everything the state machine had
// applied when it was called: the reconciled configuration (services,
// realservers, owned addresses) and the replicated connections. The keeper
// asks before it requests the first lease of a new epoch, so a director
// takes an address over only with every established connection installed.
func (h *haNode) ready(ctx context.Context) error {
	// Bounded: the keeper retries, and meanwhile renews its other leases.
	ctx, cancel := context.WithTimeout(ctx, max(h.d.cfg.LeaseDuration/4, 50*time.Millisecond))
	defer cancel()
	gen := h.d.fsm.Generation()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for h.d.reconciledGen() < gen {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the dataplane to reconcile: %w", ctx.Err())
		case <-t.C:
		}
	}
	if h.sync == nil {
		return nil
	}
	return h.sync.catchUp(ctx)
}

// leaderClient returns an InternalService client for the current leader,
// or an error when there is none or it is this node.
func (h *haNode) leaderClient(context.Context) (raftlbv1.InternalServiceClient, error) {
	id, addr, err := h.d.leaderAPI()
	if err != nil {
		return nil, err
	}
	if id == h.d.cfg.ID {
		return nil, fmt.Errorf("lease from %s: %w", id, ErrNotLeader)
	}
	conn, err := h.d.fwd.connTo(addr)
	if err != nil {
		return nil, err
	}
	return raftlbv1.NewInternalServiceClient(conn), nil
}

// lazyAnnouncer opens its gratuitous ARP sockets on first use and closes
// them when the keeper stops.
type lazyAnnouncer struct {
	front, inside string
	log           *slog.Logger

	mu  sync.Mutex
	an  *ha.IfaceAnnouncer
	all []*ha.GARPSender
}

func (l *lazyAnnouncer) Announce(ctx context.Context, addr netip.Addr, kind raftlbv1.AddressKind) error {
	l.mu.Lock()
	if l.an == nil {
		if err := l.openLocked(); err != nil {
			l.mu.Unlock()
			return err
		}
	}
	an := *l.an
	l.mu.Unlock()
	return an.Announce(ctx, addr, kind)
}

func (l *lazyAnnouncer) openLocked() error {
	an := &ha.IfaceAnnouncer{}
	for _, ifc := range []string{l.front, l.inside} {
		if ifc == "" {
			continue
		}
		s, err := ha.OpenGARP(ifc, false, l.log)
		if err != nil {
			l.closeLocked()
			return fmt.Errorf("open gratuitous arp: %w", err)
		}
		l.all = append(l.all, s)
		if ifc == l.front {
			an.VIP = s
		} else {
			an.Gateway = s
		}
	}
	l.an = an
	return nil
}

func (l *lazyAnnouncer) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closeLocked()
}

func (l *lazyAnnouncer) closeLocked() {
	for _, s := range l.all {
		if err := s.Close(); err != nil {
			l.log.Warn("close gratuitous arp", "err", err)
		}
	}
	l.all, l.an = nil, nil
}

// becomeLeader starts granting leases in term; called once the barrier of
// the term has completed.
func (h *haNode) becomeLeader(term uint64) { h.g.BecomeLeader(term, time.Now()) }

// stepDown stops granting (leadership lost, or shutting down).
func (h *haNode) stepDown() { h.g.StepDown() }

// hint passes memberlist's view of a director to the reassigner. A
// director that (re)joins may have answered for this director's addresses
// while it was cut off, until its lease ran out: the owner announces them
// afresh.
func (h *haNode) hint(id string, alive bool) {
	h.r.Hint(id, alive)
	if alive && h.k != nil {
		h.k.Reannounce()
	}
}

// release hands this director's addresses over for a graceful shutdown and
// waits (bounded) until the state machine shows them assigned elsewhere, so
// a leader that is shutting down commits the move before it hands over
// leadership.
func (h *haNode) release(ctx context.Context) {
	if h.k == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	if err := h.k.Release(ctx); err != nil {
		h.d.log.Warn("release addresses", "err", err)
		return
	}
	for {
		ch := h.d.fsm.Changed()
		mine := 0
		for _, a := range h.d.fsm.Addresses() {
			if a.GetOwner() == h.d.cfg.ID {
				mine++
			}
		}
		if mine == 0 {
			h.d.log.Info("addresses handed over")
			return
		}
		select {
		case <-ctx.Done():
			h.d.log.Warn("addresses not yet reassigned at shutdown", "addresses", mine)
			return
		case <-ch:
		}
	}
}

// leaseRemaining fills each address's lease_remaining_ms as this director
// sees it: its own lease for an address it owns, else (on the leader) the
// last lease granted; zero when unknown.
func (h *haNode) leaseRemaining(as []*raftlbv1.Address) {
	now := time.Now()
	for _, a := range as {
		ip, err := netip.ParseAddr(a.GetAddress())
		if err != nil || a.GetOwner() == "" {
			continue
		}
		var deadline time.Time
		if h.k != nil && a.GetOwner() == h.d.cfg.ID {
			deadline, _ = h.k.Deadline(ip)
		} else if h.g.IsLeader() {
			if t := h.g.LastGrant(ip); !t.IsZero() {
				deadline = t.Add(h.g.LeaseDuration())
			}
		}
		if left := deadline.Sub(now); !deadline.IsZero() && left > 0 {
			a.LeaseRemainingMs = left.Milliseconds()
		}
	}
}

// status adds what HA knows to a status answer: each address's lease as
// seen here and the connection-sync lag of this director's installer.
func (h *haNode) status(resp *raftlbv1.GetStatusResponse) {
	h.leaseRemaining(resp.GetAddresses())
	if h.sync != nil {
		resp.ConnectionSyncLagMs = h.sync.lagMs.Load()
	}
}

// moveVIP hands addr over to director to; the leader only (the API handler
// forwards).
func (h *haNode) moveVIP(ctx context.Context, addr netip.Addr, to string) (*raftlbv1.Address, error) {
	if err := h.r.Move(ctx, addr, to); err != nil {
		return nil, err
	}
	for _, a := range h.d.fsm.Addresses() {
		if a.GetAddress() == addr.String() {
			h.leaseRemaining([]*raftlbv1.Address{a})
			return a, nil
		}
	}
	return nil, fmt.Errorf("move %s: %w", addr, ha.ErrUnknownAddress)
}

// checkLeaseCaller makes sure a lease request comes from the director it
// names: its certificate's common name is that id.
func checkLeaseCaller(ctx context.Context, directorID string, insecure bool) error {
	if directorID == "" {
		return &fsm.Error{Code: codes.InvalidArgument, Field: "director_id", Reason: "required"}
	}
	if insecure {
		return nil
	}
	id, ok := identityFrom(ctx)
	if !ok || id.Role != pki.RoleDirector || id.Name != directorID {
		return fmt.Errorf("lease for %q requested by %q: %w", directorID, id.Name, ErrPermissionDenied)
	}
	return nil
}

// raftLeader is the Raft node as the grantor needs it.
type raftLeader struct{ d *Director }

// VerifyLeader implements ha.Leader: the term must be one whose leadership
// barrier has completed, a quorum must confirm this node still leads, and
// the term must not have moved meanwhile.
func (l raftLeader) VerifyLeader(ctx context.Context) (uint64, error) {
	r := l.d.raft
	term := r.CurrentTerm()
	if l.d.barrierTerm.Load() != term {
		return 0, fmt.Errorf("leadership of term %d not established: %w", term, ErrNotLeader)
	}
	if err := waitFuture(ctx, r.VerifyLeader()); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, fmt.Errorf("verify leader: %w", ErrNotLeader)
		}
		return 0, fmt.Errorf("verify leader: %w", err)
	}
	if now := r.CurrentTerm(); now != term {
		return 0, fmt.Errorf("term moved from %d to %d: %w", term, now, ErrNotLeader)
	}
	return term, nil
}

// localProposer commits on this node only: the reassigner's proposals must
// never be forwarded, or one could commit through another leader and slip
// past the lease fence.
type localProposer struct{ d *Director }

// ProposeInTerm implements ha.TermProposer: it refuses unless Raft is still
// in term and this node's leadership of term is established, so a proposal
// resting on one term's lease bookkeeping never commits in a later term.
func (p localProposer) ProposeInTerm(ctx context.Context, term uint64, cmd *raftlbv1.Command) (*raftlbv1.Result, error) {
	if err := fsm.ValidateCommand(cmd); err != nil {
		return nil, err
	}
	if cur, est := p.d.raft.CurrentTerm(), p.d.barrierTerm.Load(); cur != term || est != term {
		return nil, fmt.Errorf("propose in term %d (raft term %d, established %d): %w", term, cur, est, ha.ErrNotLeader)
	}
	cmd.UnixNano = time.Now().UnixNano()
	cmd.Origin = p.d.cfg.ID
	resp, err := p.d.applyLocal(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return resp.GetResult(), nil
}

// batchProposer commits connection batches through the leader, forwarding
// when needed (the state machine checks every entry against the VIP's owner,
// so a batch that commits through another leader does no harm). Unlike
// propose it returns at the commit, without waiting for this director to
// apply the entry too: the batcher needs no read-your-writes, and the wait
// would cost a commit round per batch.
type batchProposer struct{ d *Director }

func (p batchProposer) Propose(ctx context.Context, cmd *raftlbv1.Command) (*raftlbv1.Result, error) {
	d := p.d
	if err := fsm.ValidateCommand(cmd); err != nil {
		return nil, err
	}
	cmd.UnixNano = time.Now().UnixNano()
	cmd.Origin = d.cfg.ID
	var resp *raftlbv1.ApplyResponse
	err := d.onLeader(ctx, false,
		func(ctx context.Context) error {
			r, err := d.applyLocal(ctx, cmd)
			resp = r
			return err
		},
		func(ctx context.Context, conn *grpc.ClientConn) error {
			r, err := raftlbv1.NewInternalServiceClient(conn).Apply(ctx, &raftlbv1.ApplyRequest{Command: cmd})
			resp = r
			return err
		})
	if err != nil {
		return nil, err
	}
	return resp.GetResult(), nil
}

// timeoutGranter bounds each lease request.
type timeoutGranter struct {
	g       ha.Granter
	timeout time.Duration
}

func (t timeoutGranter) GrantLease(ctx context.Context, claims []ha.Claim) (ha.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	return t.g.GrantLease(ctx, claims)
}

func (t timeoutGranter) ReleaseLease(ctx context.Context, claims []ha.Claim, leaving bool) error {
	ctx, cancel := context.WithTimeout(ctx, max(t.timeout, time.Second))
	defer cancel()
	return t.g.ReleaseLease(ctx, claims, leaving)
}
