package ha

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// Granter is the owner's way to the leader's Grantor: over
// InternalService.GrantLease/ReleaseLease, or directly when this node leads.
type Granter interface {
	GrantLease(ctx context.Context, claims []Claim) (Lease, error)
	ReleaseLease(ctx context.Context, claims []Claim, leaving bool) error
}

// LeaseDataplane is the packet path's lease gate. A zero deadline silences
// the address at once. The deadline carries Go's monotonic reading; the
// dataplane converts it to CLOCK_MONOTONIC (*dataplane.Dataplane has this
// method).
type LeaseDataplane interface {
	SetLease(addr netip.Addr, deadline time.Time) error
}

// Announcer sends one gratuitous ARP announcement for an address of the
// given kind (VIPs on the front interface, the NAT gateway on the inside).
type Announcer interface {
	Announce(ctx context.Context, addr netip.Addr, kind raftlbv1.AddressKind) error
}

// AddressSource is the local replicated state (fsm.FSM has it).
type AddressSource interface {
	Addresses() []*raftlbv1.Address
	Changed() <-chan struct{}
}

// KeeperConfig configures the owner-side lease keeper.
type KeeperConfig struct {
	// ID is this director's id.
	ID string
	// Retry is the wait after a failed lease request; default 100ms.
	Retry time.Duration
	// FirstRenew is the renewal period until the leader has told the lease
	// duration (then the duration divided by Renewals); default 500ms.
	FirstRenew time.Duration
	// Renewals is how many renewals a lease duration holds; default 3. More
	// keep more of the lease in hand when the leader is lost (a new one must
	// be elected before the leases run out, or every address goes dark
	// until it is), at the price of more requests.
	Renewals int
	// GARPCount announcements, GARPInterval apart, on takeover and whenever a
	// lapsed lease is granted again; default 5 and 200ms.
	GARPCount    int
	GARPInterval time.Duration
	// GARPRefresh is the period of announcements while the lease holds;
	// zero disables them.
	GARPRefresh time.Duration
	// Ready is called before the first lease of a new epoch is requested; it
	// returns once the dataplane has the services and the replicated
	// connections installed. Nil means always ready.
	Ready func(ctx context.Context) error
	// Flush pushes pending connection sync and waits for it to commit
	// (Batcher.Flush); called before a release. Nil means nothing to flush.
	Flush func(ctx context.Context) error
	// FlushTimeout bounds Flush: past it the addresses are released anyway,
	// since a handover that waits on a stalled commit keeps them dark and
	// stops every renewal. Default half the lease duration (FirstRenew
	// until the leader has told it).
	FlushTimeout time.Duration
	// Now is the monotonic clock; default time.Now.
	Now func() time.Time
}

func (c *KeeperConfig) defaults() {
	if c.Retry <= 0 {
		c.Retry = 100 * time.Millisecond
	}
	if c.FirstRenew <= 0 {
		c.FirstRenew = 500 * time.Millisecond
	}
	if c.Renewals <= 0 {
		c.Renewals = 3
	}
	if c.GARPCount == 0 {
		c.GARPCount = 5
	}
	if c.GARPInterval <= 0 {
		c.GARPInterval = 200 * time.Millisecond
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// held is an address the replicated state assigns to this director.
type held struct {
	kind     raftlbv1.AddressKind
	epoch    uint64
	seen     time.Time // when the assignment was first seen
	ready    bool      // Ready passed for this epoch
	deadline time.Time // lease deadline; zero when none
	took     bool      // first announcement of this epoch done
	burst    int       // announcements left in the current burst
	nextGARP time.Time // zero when none is due
}

func (h *held) valid(now time.Time) bool { return !h.deadline.IsZero() && now.Before(h.deadline) }

// Keeper is the owner's side of address leases. For the addresses the
// replicated state assigns to this director it asks the leader for leases
// every third of the lease duration and passes them to the dataplane, whose
// programs stop answering by themselves when a deadline passes. On takeover it
// waits for Ready, gets a lease and only then announces the address with a
// burst of gratuitous ARP; it announces only while the lease is valid, and
// again after a lapsed lease (a healed partition) is granted anew. Every
// request doubles as a heartbeat telling the leader this director is alive.
//
// One goroutine (Run) owns the keeper's state; Step is that goroutine's unit
// of work, exported for deterministic tests with a fake clock.
type Keeper struct {
	cfg KeeperConfig
	src AddressSource
	g   Granter
	dp  LeaseDataplane
	an  Announcer
	log *slog.Logger
	m   *Metrics

	held      map[netip.Addr]*held
	released  map[netip.Addr]uint64
	lease     time.Duration // as the leader last told; 0 until then
	period    time.Duration
	nextRenew time.Time
	stopped   bool

	leases      atomic.Pointer[map[netip.Addr]time.Time]
	releaseC    chan releaseReq
	reannounceC chan struct{}
}

type releaseReq struct {
	ctx  context.Context
	done chan error
}

// NewKeeper returns a keeper; Run drives it.
func NewKeeper(cfg KeeperConfig, src AddressSource, g Granter, dp LeaseDataplane, an Announcer, log *slog.Logger, m *Metrics) *Keeper {
	cfg.defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Keeper{cfg: cfg, src: src, g: g, dp: dp, an: an, log: log.With("component", "lease-keeper"), m: m,
		held: make(map[netip.Addr]*held), released: make(map[netip.Addr]uint64), period: cfg.FirstRenew,
		releaseC: make(chan releaseReq), reannounceC: make(chan struct{}, 1)}
	k.publish()
	return k
}

// Owns reports whether this director holds a valid lease on addr now. Safe
// from any goroutine; the connection-sync batcher uses it to replicate only
// what this director answers for.
func (k *Keeper) Owns(addr netip.Addr) bool {
	d, ok := (*k.leases.Load())[addr]
	return ok && k.cfg.Now().Before(d)
}

// Deadline returns when this director's lease on addr runs out, if it holds
// one. Safe from any goroutine.
func (k *Keeper) Deadline(addr netip.Addr) (time.Time, bool) {
	d, ok := (*k.leases.Load())[addr]
	return d, ok
}

func (k *Keeper) publish() {
	m := make(map[netip.Addr]time.Time, len(k.held))
	for a, h := range k.held {
		if !h.deadline.IsZero() {
			m[a] = h.deadline
		}
	}
	k.leases.Store(&m)
}

// Run keeps the leases until ctx ends, then silences every address.
func (k *Keeper) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	defer k.silenceAll()
	for {
		ch := k.src.Changed()
		next := k.Step(ctx, k.cfg.Now())
		t.Reset(max(time.Until(next), time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		case <-t.C:
		case r := <-k.releaseC:
			r.done <- k.release(r.ctx)
		case <-k.reannounceC:
			k.burstAll(k.cfg.Now())
		}
	}
}

// Reannounce schedules a fresh burst of gratuitous ARP for every address
// whose lease is valid, e.g. when a director that was cut off rejoins and
// may have answered for them meanwhile (until its lease ran out), so hosts
// that cached its MAC learn the owner's again. It never blocks.
func (k *Keeper) Reannounce() {
	select {
	case k.reannounceC <- struct{}{}:
	default:
	}
}

// burstAll starts a burst for every address with a valid lease.
func (k *Keeper) burstAll(now time.Time) {
	for _, h := range k.held {
		if h.valid(now) {
			h.burst, h.nextGARP = k.cfg.GARPCount, now
		}
	}
}

// Release hands every address over for a graceful shutdown: it silences
// them, flushes connection sync, tells the leader (leaving) and stops
// claiming. The leader reassigns them at once. Run must be running.
func (k *Keeper) Release(ctx context.Context) error {
	r := releaseReq{ctx: ctx, done: make(chan error, 1)}
	select {
	case k.releaseC <- r:
	case <-ctx.Done():
		return fmt.Errorf("release leases: %w", ctx.Err())
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("release leases: %w", ctx.Err())
	}
}

func (k *Keeper) release(ctx context.Context) error {
	k.stopped = true
	claims := k.handOver(ctx, slices.SortedFunc(maps.Keys(k.held), netip.Addr.Compare))
	if err := k.g.ReleaseLease(ctx, claims, true); err != nil {
		return fmt.Errorf("release leases: %w", err)
	}
	return nil
}

// handOver silences the addresses, flushes connection sync and only then
// forgets them; it returns the claims to release. The flush runs while the
// addresses still count as owned (Owns), or the batcher would drop the very
// events it is meant to push. An address whose silence failed is kept and
// left out: the dataplane may answer for it until its deadline, so only the
// leader's lease bound may free it.
func (k *Keeper) handOver(ctx context.Context, addrs []netip.Addr) []Claim {
	var claims []Claim
	for _, a := range addrs {
		h := k.held[a]
		if h == nil {
			continue
		}
		if k.silence(a) != nil {
			h.burst, h.nextGARP = 0, time.Time{} // draw no traffic while leaving
			continue
		}
		claims = append(claims, Claim{Address: a, Epoch: h.epoch})
	}
	if len(claims) > 0 && k.cfg.Flush != nil {
		fctx, cancel := context.WithTimeout(ctx, k.flushTimeout())
		err := k.cfg.Flush(fctx)
		cancel()
		if err != nil {
			// Releasing anyway beats leaving the addresses dark for a lease.
			k.log.Warn("flush connection sync before handover", "err", err)
		}
	}
	for _, c := range claims {
		k.released[c.Address] = c.Epoch
		delete(k.held, c.Address)
	}
	k.publish()
	return sortClaims(claims)
}

func (k *Keeper) flushTimeout() time.Duration {
	switch {
	case k.cfg.FlushTimeout > 0:
		return k.cfg.FlushTimeout
	case k.lease > 0:
		return k.lease / 2
	}
	return k.cfg.FirstRenew
}

// releasedClaims are the handed-over claims whose new assignment this
// director has not seen committed yet.
func (k *Keeper) releasedClaims() []Claim {
	out := make([]Claim, 0, len(k.released))
	for a, e := range k.released {
		out = append(out, Claim{Address: a, Epoch: e})
	}
	return sortClaims(out)
}

func (k *Keeper) silence(a netip.Addr) error {
	if err := k.dp.SetLease(a, time.Time{}); err != nil {
		k.log.Error("silence address", "vip", a, "err", err)
		return fmt.Errorf("silence %s: %w", a, err)
	}
	return nil
}

func (k *Keeper) silenceAll() {
	for a := range k.held {
		k.silence(a)
	}
	clear(k.held)
	k.publish()
}

// Step does what is due at now and returns when it next has something to do.
func (k *Keeper) Step(ctx context.Context, now time.Time) time.Time {
	defer k.publish()
	k.sync(now)
	if k.stopped {
		return now.Add(time.Hour)
	}
	for a, h := range k.held {
		if !h.deadline.IsZero() && !now.Before(h.deadline) {
			k.log.Warn("lease lapsed", "vip", a, "epoch", h.epoch)
			h.deadline, h.burst, h.nextGARP = time.Time{}, 0, time.Time{}
			k.m.inc(func(m *Metrics) prometheus.Counter { return m.LeaseLapses }, 1)
		}
	}
	pending := false
	for _, h := range k.held {
		if !h.ready {
			pending = true
		}
	}
	if !now.Before(k.nextRenew) || pending {
		k.renew(ctx)
	}
	k.announce(ctx)
	next := k.nextRenew
	for _, h := range k.held {
		for _, t := range []time.Time{h.deadline, h.nextGARP} {
			if !t.IsZero() && t.Before(next) {
				next = t
			}
		}
	}
	return next
}

// sync follows the replicated assignments: new addresses and epochs are
// taken on, lost ones silenced at once.
func (k *Keeper) sync(now time.Time) {
	epochs := make(map[netip.Addr]uint64)
	mine := make(map[netip.Addr]*raftlbv1.Address)
	for _, a := range k.src.Addresses() {
		ip, err := netip.ParseAddr(a.GetAddress())
		if err != nil {
			continue
		}
		epochs[ip] = a.GetEpoch()
		if a.GetOwner() != k.cfg.ID {
			continue
		}
		if e, ok := k.released[ip]; ok && e == a.GetEpoch() {
			continue
		}
		mine[ip] = a
	}
	for ip, e := range k.released {
		if cur, ok := epochs[ip]; !ok || cur != e {
			delete(k.released, ip) // the handover has been committed
		}
	}
	for ip, h := range k.held {
		if a, ok := mine[ip]; !ok || a.GetEpoch() != h.epoch {
			k.log.Info("address no longer ours", "vip", ip, "epoch", h.epoch)
			k.silence(ip)
			delete(k.held, ip)
		}
	}
	for ip, a := range mine {
		if _, ok := k.held[ip]; !ok && !k.stopped {
			k.held[ip] = &held{kind: a.GetKind(), epoch: a.GetEpoch(), seen: now}
		}
	}
}

// renew asks the leader to extend the leases of every ready address (and
// says hello when there are none).
func (k *Keeper) renew(ctx context.Context) {
	if k.cfg.Ready != nil {
		for _, h := range k.held {
			if h.ready {
				continue
			}
			if err := k.cfg.Ready(ctx); err != nil {
				k.log.Warn("dataplane not ready for takeover", "err", err)
				break
			}
			for _, h := range k.held {
				h.ready = true
			}
			break
		}
	} else {
		for _, h := range k.held {
			h.ready = true
		}
	}
	var claims []Claim
	for a, h := range k.held {
		if h.ready {
			claims = append(claims, Claim{Address: a, Epoch: h.epoch})
		}
	}
	start := k.cfg.Now() // before sending: the lease counts from here
	lease, err := k.g.GrantLease(ctx, sortClaims(claims))
	if err != nil {
		k.log.Debug("request leases", "err", err)
		k.nextRenew = start.Add(k.cfg.Retry)
		return
	}
	if lease.Duration > 0 {
		k.lease = lease.Duration
		k.period = lease.Duration / time.Duration(k.cfg.Renewals)
	}
	k.nextRenew = start.Add(k.period)
	deadline := start.Add(lease.Duration)
	granted := make(map[Claim]bool, len(lease.Granted))
	for _, c := range lease.Granted {
		granted[c] = true
	}
	release := make(map[Claim]bool, len(lease.Release))
	for _, c := range lease.Release {
		release[c] = true
	}
	var handOver []netip.Addr
	for _, c := range claims {
		h := k.held[c.Address]
		switch {
		case release[c]:
			handOver = append(handOver, c.Address)
		case granted[c]:
			fresh := !h.valid(start)
			if err := k.dp.SetLease(c.Address, deadline); err != nil {
				k.log.Error("set lease", "vip", c.Address, "err", err)
				continue
			}
			h.deadline = deadline
			if fresh {
				h.burst, h.nextGARP = k.cfg.GARPCount, start
			}
		default:
			if !h.deadline.IsZero() {
				k.log.Warn("lease refused", "vip", c.Address, "epoch", c.Epoch)
			}
			k.silence(c.Address)
			h.deadline, h.burst, h.nextGARP = time.Time{}, 0, time.Time{}
		}
	}
	if len(handOver) > 0 {
		k.handOver(ctx, handOver)
	}
	// Every released claim goes out again with each renewal until its new
	// assignment is committed: a release that was lost, went to a deposed
	// leader or outlived the move that asked for it would otherwise leave
	// the address dark, since this director never claims that epoch again.
	if len(k.released) > 0 {
		if err := k.g.ReleaseLease(ctx, k.releasedClaims(), false); err != nil {
			k.log.Warn("release leases", "err", err)
		}
	}
}

// announce sends the gratuitous ARP that is due, and only for addresses
// whose lease is valid at the moment of sending.
func (k *Keeper) announce(ctx context.Context) {
	addrs := slices.SortedFunc(maps.Keys(k.held), netip.Addr.Compare)
	for _, a := range addrs {
		h := k.held[a]
		now := k.cfg.Now()
		if h.nextGARP.IsZero() || now.Before(h.nextGARP) {
			continue
		}
		if !h.valid(now) {
			h.burst, h.nextGARP = 0, time.Time{}
			continue
		}
		if err := k.an.Announce(ctx, a, h.kind); err != nil {
			k.log.Warn("gratuitous arp", "vip", a, "err", err)
			k.m.inc(func(m *Metrics) prometheus.Counter { return m.GARPErrors }, 1)
		} else {
			k.m.inc(func(m *Metrics) prometheus.Counter { return m.GARPsSent }, 1)
		}
		if !h.took {
			h.took = true
			k.log.Info("took over address", "vip", a, "epoch", h.epoch)
			k.m.inc(func(m *Metrics) prometheus.Counter { return m.Takeovers }, 1)
			k.m.observe(func(m *Metrics) prometheus.Histogram { return m.TakeoverSeconds }, now.Sub(h.seen))
		}
		switch {
		case h.burst > 1:
			h.burst--
			h.nextGARP = now.Add(k.cfg.GARPInterval)
		case k.cfg.GARPRefresh > 0:
			h.burst = 0
			h.nextGARP = now.Add(k.cfg.GARPRefresh)
		default:
			h.burst, h.nextGARP = 0, time.Time{}
		}
	}
}
