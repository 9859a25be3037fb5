package server

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/health"
)

// healthTick is how often verdicts are reconsidered without a change of
// the replicated state or of a probe result (agents' liveness ages).
const healthTick = time.Second

// healthLoop runs the director's health checks and replicates verdicts.
//
// Every full director probes every realserver of every service that has a
// check (server/health), so a director taking a VIP over already has a
// fresh view. With a packet path, DR and TUN realservers are probed through
// their forwarding path (pathDialer); NAT ones on their own addresses. Only
// the current owner of a service's VIP proposes verdicts
// for it, so two directors that see a realserver differently never
// flip-flop the replicated state; a new owner without a view of its own yet
// (Unknown) proposes nothing for that realserver until it has one.
//
// A realserver's verdict is DOWN when its agent has not reported for
// Config.AgentTimeout (only a realserver some agent registered an address
// for: one without an agent is judged by its probes alone); otherwise it
// is the probes' verdict, and UNKNOWN for a service without a check. The
// dataplane treats DOWN as unhealthy (no new connections) and UNKNOWN as
// usable.
type healthLoop struct {
	id      string
	src     *fsm.FSM
	propose func(ctx context.Context, cmd *raftlbv1.Command) error
	checker *health.Checker
	timeout time.Duration // AgentTimeout
	write   time.Duration // WriteTimeout, per proposal
	log     *slog.Logger
	kick    chan struct{}
	// path proves DR and TUN targets' forwarding path; nil without a packet path,
	// when probes go straight to each realserver's own address.
	path *pathDialer
}

// runHealth probes and proposes until ctx ends; a witness does neither.
func (d *Director) runHealth(ctx context.Context) {
	if d.cfg.Witness {
		return
	}
	h := &healthLoop{
		id:  d.cfg.ID,
		src: d.fsm,
		propose: func(ctx context.Context, cmd *raftlbv1.Command) error {
			_, err := d.propose(ctx, cmd)
			return err
		},
		timeout: d.cfg.AgentTimeout,
		write:   d.cfg.WriteTimeout,
		log:     d.base.With("component", "health"),
		kick:    make(chan struct{}, 1),
	}
	var dialer health.Dialer = &health.DirectDialer{}
	if pp := d.packetPath(); pp != nil && d.cfg.Iface != "" {
		tun, _ := pp.dp.(tunProber) // a dataplane without it: TUN probed directly
		h.path = newPathDialer(d.cfg.Iface, tun, d.base)
		dialer = h.path
		defer h.path.close()
	}
	h.checker = health.New(health.Options{
		Dialer:   dialer,
		Logger:   d.base,
		OnChange: func(health.Target, health.State) { h.wake() },
	})
	d.checker.Store(h.checker)
	h.run(ctx)
}

func (h *healthLoop) wake() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *healthLoop) run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := h.checker.Run(ctx); err != nil {
			h.log.Error("health checker stopped", "err", err)
		}
	}()
	defer func() { <-done }()
	t := time.NewTicker(healthTick)
	defer t.Stop()
	for {
		changed := h.src.Changed()
		svcs := h.src.Services()
		targets := healthTargets(svcs, h.log)
		h.checker.Update(targets)
		if h.path != nil {
			h.path.forget(targets)
		}
		h.step(ctx, svcs, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-changed:
			// Rebuilding copies every service: under a burst of writes, rebuild at
			// most every healthCoalesce instead of once per committed entry.
			select {
			case <-ctx.Done():
				return
			case <-time.After(healthCoalesce):
			}
		case <-h.kick:
		case <-t.C:
		}
	}
}

// healthCoalesce bounds how often a burst of replicated changes rebuilds the
// probe targets; a new check starts at most this much later.
const healthCoalesce = 100 * time.Millisecond

// healthTargets are the realservers of every service with a check.
func healthTargets(svcs []*raftlbv1.VirtualService, log *slog.Logger) map[health.Target]health.Check {
	out := make(map[health.Target]health.Check)
	for _, vs := range svcs {
		chk, err := health.FromProto(vs.GetHealthCheck())
		if err != nil {
			log.Error("invalid health check", "service", serviceName(vs.GetKey()), "err", err)
			continue
		}
		if chk.Type == health.CheckNone {
			continue
		}
		for _, rs := range vs.GetRealservers() {
			t, err := health.TargetFromProto(vs.GetKey(), rs)
			if err != nil {
				log.Error("invalid health target", "service", serviceName(vs.GetKey()), "realserver", rs.GetAddress(), "err", err)
				continue
			}
			out[t] = chk
		}
	}
	return out
}

// step proposes, for the services whose VIP this director owns, every
// verdict that differs from the replicated one, in one command.
func (h *healthLoop) step(ctx context.Context, svcs []*raftlbv1.VirtualService, now time.Time) {
	verdicts := h.verdicts(svcs, h.checker.States(), now)
	if len(verdicts) == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, h.write)
	defer cancel()
	err := h.propose(pctx, &raftlbv1.Command{Op: &raftlbv1.Command_HealthVerdicts{
		HealthVerdicts: &raftlbv1.HealthVerdicts{Verdicts: verdicts},
	}})
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			h.log.Warn("propose health verdicts", "verdicts", len(verdicts), "err", err)
		}
		return
	}
	for _, v := range verdicts {
		h.log.Info("health verdict", "service", serviceName(v.GetService()), "realserver", v.GetAddress(),
			"port", v.GetPort(), "state", v.GetState().String())
	}
}

// verdicts computes the proposals of step.
func (h *healthLoop) verdicts(svcs []*raftlbv1.VirtualService, states map[health.Target]health.State, now time.Time) []*raftlbv1.HealthVerdict {
	owned := make(map[string]bool)
	for _, a := range h.src.Addresses() {
		if a.GetOwner() == h.id {
			owned[a.GetAddress()] = true
		}
	}
	stale := staleAgentAddrs(h.src.Agents(), now, h.timeout)
	var out []*raftlbv1.HealthVerdict
	for _, vs := range svcs {
		if !owned[vs.GetKey().GetVip()] {
			continue
		}
		chk, err := health.FromProto(vs.GetHealthCheck())
		if err != nil {
			continue
		}
		for _, rs := range vs.GetRealservers() {
			t, err := health.TargetFromProto(vs.GetKey(), rs)
			if err != nil {
				continue
			}
			want, ok := verdictFor(t, chk, states, stale)
			if !ok || want == rs.GetHealth() {
				continue
			}
			v := health.Verdict(t, health.StateFromProto(want))
			v.State = want
			out = append(out, v)
		}
	}
	return out
}

// verdictFor is a realserver's verdict, or false when this director has no
// opinion on it yet.
func verdictFor(t health.Target, chk health.Check, states map[health.Target]health.State, stale map[netip.Addr]bool) (raftlbv1.HealthState, bool) {
	if stale[t.Address] {
		return raftlbv1.HealthState_HEALTH_STATE_DOWN, true
	}
	if chk.Type == health.CheckNone {
		return raftlbv1.HealthState_HEALTH_STATE_UNKNOWN, true
	}
	s, ok := states[t]
	if !ok || s == health.StateUnknown {
		return 0, false
	}
	return s.ToProto(), true
}

// staleAgentAddrs are the addresses registered by agents that have not
// reported for longer than timeout.
func staleAgentAddrs(agents []*raftlbv1.AgentInfo, now time.Time, timeout time.Duration) map[netip.Addr]bool {
	out := make(map[netip.Addr]bool)
	for _, a := range agents {
		if now.Sub(time.UnixMilli(a.GetLastSeenUnixMs())) <= timeout {
			continue
		}
		for _, ifc := range a.GetInterfaces() {
			for _, s := range ifc.GetAddresses() {
				if p, err := netip.ParsePrefix(s); err == nil {
					out[p.Addr()] = true
				} else if ip, err := netip.ParseAddr(s); err == nil {
					out[ip] = true
				}
			}
		}
	}
	return out
}
