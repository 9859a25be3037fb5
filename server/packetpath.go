package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
)

// PacketDataplane is the director's packet path as the director drives it;
// *dataplane.Dataplane implements it. Behind an interface so the conversion
// from the replicated state is tested without BPF.
type PacketDataplane interface {
	Apply(dataplane.State) error
	SetLease(addr netip.Addr, deadline time.Time) error
	Connections() ([]dataplane.Conn, error)
	DeleteConnections(keys []dataplane.ConnKey) error
	Flush(vip *netip.Addr) error
	Stats() (dataplane.Stats, error)
	Run(ctx context.Context, onEvent func([]dataplane.Event)) error
}

// PacketPath adapts a PacketDataplane to the director: it implements the
// Dataplane seam (Reconcile converts the replicated state into a
// dataplane.State and applies it), and New wires the rest of it in when a
// director is given one with WithDataplane: the flush of replicated
// FlushConnections commands (through the state machine's connection hook),
// the connection table and counters for the API and /metrics, and Run's
// goroutines (the dataplane's own loop and the lease keeper).
//
// Reconcile is called by the director's reconciler goroutine only; the
// other methods are safe from any goroutine.
type PacketPath struct {
	dp  PacketDataplane
	log *slog.Logger

	// id is this director's id, set once by New before anything runs.
	id string

	// skipped counts entries of the replicated state the dataplane refused
	// (each logged), reconcileErrors failed reconciliations as a whole.
	skipped         atomic.Uint64
	reconcileErrors atomic.Uint64

	// health is the verdict each realserver had at the last Reconcile, to
	// apply a service's failure policy when one goes down. Reconcile's only.
	health map[dataplane.RealKey]raftlbv1.HealthState

	// timeouts are each service's effective idle timeouts, for the expiry
	// of listed connections.
	mu       sync.Mutex
	timeouts map[dataplane.ServiceKey]dataplane.Timeouts
}

// NewPacketPath wraps dp; pass it to New with WithDataplane.
func NewPacketPath(dp PacketDataplane, log *slog.Logger) *PacketPath {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PacketPath{
		dp:       dp,
		log:      log.With("component", "packetpath"),
		health:   make(map[dataplane.RealKey]raftlbv1.HealthState),
		timeouts: make(map[dataplane.ServiceKey]dataplane.Timeouts),
	}
}

// Reconcile converges the dataplane on the replicated state: every service
// with its realservers (weight, method, drain, health: a DOWN verdict makes
// a realserver Unhealthy, UNKNOWN counts as usable), every announced VIP and
// the NAT gateway, and this director's front address. Every director holds
// every service and address; the leases decide which of them it answers
// for. An entry the dataplane refuses is logged, counted and left out; the
// rest is applied.
func (p *PacketPath) Reconcile(_ context.Context, f *fsm.FSM) error {
	st, svcs := p.desired(f)
	if err := p.apply(st); err != nil {
		p.reconcileErrors.Add(1)
		return err
	}
	p.mu.Lock()
	clear(p.timeouts)
	for _, s := range st.Services {
		p.timeouts[s.ServiceKey] = s.Timeouts
	}
	p.mu.Unlock()
	p.applyFailurePolicy(svcs)
	return nil
}

// desired converts the replicated state; entries that do not convert are
// logged, counted and left out.
func (p *PacketPath) desired(f *fsm.FSM) (dataplane.State, []*raftlbv1.VirtualService) {
	var st dataplane.State
	svcs := f.Services()
	for _, vs := range svcs {
		s, err := serviceToDataplane(vs)
		if err != nil {
			p.skip("service", serviceName(vs.GetKey()), err)
			continue
		}
		for _, rs := range vs.GetRealservers() {
			r, err := realserverToDataplane(rs)
			if err != nil {
				p.skip("realserver", serviceName(vs.GetKey())+" "+rs.GetAddress(), err)
				continue
			}
			s.Realservers = append(s.Realservers, r)
		}
		st.Services = append(st.Services, s)
	}
	for _, a := range f.Addresses() {
		addr, err := netip.ParseAddr(a.GetAddress())
		if err != nil || !addr.Is4() {
			p.skip("address", a.GetAddress(), fmt.Errorf("parse address %q: %w", a.GetAddress(), dataplane.ErrInvalid))
			continue
		}
		switch a.GetKind() {
		case raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY:
			st.Gateways = append(st.Gateways, addr)
		default:
			st.VIPs = append(st.VIPs, addr)
		}
	}
	for _, d := range f.Directors() {
		if d.GetId() != p.id || d.GetFrontAddress() == "" {
			continue
		}
		if a, err := netip.ParseAddr(d.GetFrontAddress()); err == nil && a.Is4() {
			st.FrontAddr = a
		}
	}
	return st, svcs
}

// apply applies st; when the dataplane refuses it as a whole, it finds the
// entries to blame by adding services (and then realservers) one at a time,
// and applies the rest.
func (p *PacketPath) apply(st dataplane.State) error {
	err := p.dp.Apply(st)
	if err == nil || !errors.Is(err, dataplane.ErrInvalid) {
		if err != nil {
			return fmt.Errorf("apply dataplane state: %w", err)
		}
		return nil
	}
	good := st
	good.Services = nil
	for _, s := range st.Services {
		try := good
		try.Services = append(slices.Clip(good.Services), s)
		if err := p.dp.Apply(try); err == nil {
			good = try
			continue
		} else if !errors.Is(err, dataplane.ErrInvalid) {
			return fmt.Errorf("apply dataplane state: %w", err)
		}
		bare := s
		bare.Realservers = nil
		try.Services = append(slices.Clip(good.Services), bare)
		if err := p.dp.Apply(try); err != nil {
			p.skip("service", s.ServiceKey.String(), err)
			continue
		}
		for _, r := range s.Realservers {
			with := bare
			with.Realservers = append(slices.Clip(bare.Realservers), r)
			try.Services = append(slices.Clip(good.Services), with)
			if err := p.dp.Apply(try); err != nil {
				p.skip("realserver", s.ServiceKey.String()+" "+netip.AddrPortFrom(r.Addr, r.Port).String(), err)
				continue
			}
			bare = with
		}
		try.Services = append(slices.Clip(good.Services), bare)
		if err := p.dp.Apply(try); err != nil {
			p.skip("service", s.ServiceKey.String(), err)
			continue
		}
		good = try
	}
	// Addresses and the front address: the same, one at a time.
	if err := p.dp.Apply(good); err == nil {
		return nil
	}
	base := good
	base.VIPs, base.Gateways, base.FrontAddr = nil, nil, netip.Addr{}
	for _, v := range good.VIPs {
		try := base
		try.VIPs = append(slices.Clip(base.VIPs), v)
		if err := p.dp.Apply(try); err != nil {
			p.skip("address", v.String(), err)
			continue
		}
		base = try
	}
	for _, g := range good.Gateways {
		try := base
		try.Gateways = append(slices.Clip(base.Gateways), g)
		if err := p.dp.Apply(try); err != nil {
			p.skip("address", g.String(), err)
			continue
		}
		base = try
	}
	try := base
	try.FrontAddr = good.FrontAddr
	if err := p.dp.Apply(try); err != nil {
		p.skip("front address", good.FrontAddr.String(), err)
		if err := p.dp.Apply(base); err != nil {
			return fmt.Errorf("apply dataplane state: %w", err)
		}
	}
	return nil
}

func (p *PacketPath) skip(what, name string, err error) {
	p.skipped.Add(1)
	p.log.Error("dataplane refused an entry; left out", "entry", what, "name", name, "err", err)
}

// applyFailurePolicy drops the local connections of realservers that just
// went down in services whose failure policy is reschedule or drop: their
// next packets are scheduled afresh among the usable realservers (for TCP
// the new realserver answers with a reset, which ends the connection; see
// the package documentation). With keep, they stay where they are.
func (p *PacketPath) applyFailurePolicy(svcs []*raftlbv1.VirtualService) {
	seen := make(map[dataplane.RealKey]raftlbv1.HealthState)
	doomed := make(map[dataplane.RealKey]bool)
	for _, vs := range svcs {
		sk, err := serviceKeyToDataplane(vs.GetKey())
		if err != nil {
			continue
		}
		for _, rs := range vs.GetRealservers() {
			a, err := netip.ParseAddr(rs.GetAddress())
			if err != nil {
				continue
			}
			rk := dataplane.RealKey{Service: sk, Real: netip.AddrPortFrom(a, uint16(rs.GetPort()))}
			seen[rk] = rs.GetHealth()
			down := rs.GetHealth() == raftlbv1.HealthState_HEALTH_STATE_DOWN
			was, known := p.health[rk]
			if down && known && was != raftlbv1.HealthState_HEALTH_STATE_DOWN {
				switch vs.GetFailurePolicy() {
				case raftlbv1.FailurePolicy_FAILURE_POLICY_RESCHEDULE, raftlbv1.FailurePolicy_FAILURE_POLICY_DROP:
					doomed[rk] = true
				}
			}
		}
	}
	p.health = seen
	if len(doomed) == 0 {
		return
	}
	conns, err := p.dp.Connections()
	if err != nil {
		p.log.Warn("read connections for the failure policy", "err", err)
		return
	}
	var keys []dataplane.ConnKey
	for _, c := range conns {
		if doomed[dataplane.RealKey{Service: connService(c.Key), Real: c.Real}] {
			keys = append(keys, c.Key)
		}
	}
	if len(keys) == 0 {
		return
	}
	if err := p.dp.DeleteConnections(keys); err != nil {
		p.log.Warn("drop connections of failed realservers", "err", err)
		return
	}
	p.log.Info("dropped connections of failed realservers", "connections", len(keys))
}

// onConnChange is the state machine's connection hook: a replicated flush
// empties this director's table (or the VIP's part of it) in log order.
// Installing and deleting replicated entries is the HA layer's hook.
func (p *PacketPath) onConnChange(ch fsm.ConnChange) {
	if !ch.Flush {
		return
	}
	var vip *netip.Addr
	if ch.FlushVIP.IsValid() {
		v := ch.FlushVIP
		vip = &v
	}
	if err := p.dp.Flush(vip); err != nil {
		p.log.Error("flush connection table", "vip", ch.FlushVIP, "err", err)
		return
	}
	p.log.Info("flushed connection table", "vip", ch.FlushVIP)
}

// connections lists the live table: to vip only when it is valid, sorted,
// at most limit entries (and whether there were more).
func (p *PacketPath) connections(vip netip.Addr, limit int, now time.Time) ([]*raftlbv1.Connection, bool, error) {
	conns, err := p.dp.Connections()
	if err != nil {
		return nil, false, fmt.Errorf("read connection table: %w", err)
	}
	if vip.IsValid() {
		conns = slices.DeleteFunc(conns, func(c dataplane.Conn) bool { return c.Key.VIP.Addr() != vip })
	}
	slices.SortFunc(conns, func(a, b dataplane.Conn) int {
		if c := a.Key.VIP.Compare(b.Key.VIP); c != 0 {
			return c
		}
		if a.Key.Proto != b.Key.Proto {
			return int(a.Key.Proto) - int(b.Key.Proto)
		}
		return a.Key.Client.Compare(b.Key.Client)
	})
	truncated := len(conns) > limit
	conns = conns[:min(len(conns), limit)]
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*raftlbv1.Connection, 0, len(conns))
	for _, c := range conns {
		out = append(out, connectionToProto(c, p.timeouts[connService(c.Key)], now))
	}
	return out, truncated, nil
}

// run drives the dataplane's loop (events, expiry, next hops) and the lease
// keeper, if any, until ctx ends.
func (p *PacketPath) run(ctx context.Context, leases LeaseKeeper, onEvents func([]dataplane.Event)) {
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := p.dp.Run(ctx, onEvents); err != nil && ctx.Err() == nil {
			p.log.Error("dataplane loop stopped", "err", err)
		}
	})
	if leases == nil {
		wg.Wait()
		return
	}
	wg.Go(func() {
		if err := leases.Run(ctx); err != nil && ctx.Err() == nil {
			p.log.Error("lease keeper stopped", "err", err)
		}
	})
	wg.Wait()
}

// --- conversions between the API and the dataplane ---

func serviceKeyToDataplane(k *raftlbv1.ServiceKey) (dataplane.ServiceKey, error) {
	vip, err := netip.ParseAddr(k.GetVip())
	if err != nil {
		return dataplane.ServiceKey{}, fmt.Errorf("parse vip: %w", err)
	}
	if k.GetPort() == 0 || k.GetPort() > 65535 {
		return dataplane.ServiceKey{}, fmt.Errorf("check port %d: %w", k.GetPort(), dataplane.ErrInvalid)
	}
	sk := dataplane.ServiceKey{VIP: vip, Port: uint16(k.GetPort())}
	switch k.GetProtocol() {
	case raftlbv1.Protocol_PROTOCOL_TCP:
		sk.Proto = dataplane.TCP
	case raftlbv1.Protocol_PROTOCOL_UDP:
		sk.Proto = dataplane.UDP
	default:
		return dataplane.ServiceKey{}, fmt.Errorf("check protocol %s: %w", k.GetProtocol(), dataplane.ErrInvalid)
	}
	return sk, nil
}

var schedulers = map[raftlbv1.Scheduler]dataplane.Scheduler{
	raftlbv1.Scheduler_SCHEDULER_UNSPECIFIED: dataplane.MH,
	raftlbv1.Scheduler_SCHEDULER_MH:          dataplane.MH,
	raftlbv1.Scheduler_SCHEDULER_SH:          dataplane.SH,
	raftlbv1.Scheduler_SCHEDULER_RR:          dataplane.RR,
	raftlbv1.Scheduler_SCHEDULER_WRR:         dataplane.WRR,
	raftlbv1.Scheduler_SCHEDULER_LC:          dataplane.LC,
	raftlbv1.Scheduler_SCHEDULER_WLC:         dataplane.WLC,
}

// serviceToDataplane converts a service without its realservers. The
// per-service Maglev table size is not honoured: the dataplane sizes every
// table alike (dataplane.Config.TableSize).
func serviceToDataplane(vs *raftlbv1.VirtualService) (dataplane.Service, error) {
	sk, err := serviceKeyToDataplane(vs.GetKey())
	if err != nil {
		return dataplane.Service{}, err
	}
	sched, ok := schedulers[vs.GetScheduler()]
	if !ok {
		return dataplane.Service{}, fmt.Errorf("check scheduler %s: %w", vs.GetScheduler(), dataplane.ErrInvalid)
	}
	sec := func(s uint32) time.Duration { return time.Duration(s) * time.Second }
	to := vs.GetTimeouts()
	t := dataplane.Timeouts{
		TCPSynRecv:     dataplane.DefaultTimeouts.TCPSynRecv,
		TCPEstablished: orDefault(sec(to.GetTcpEstablishedSeconds()), dataplane.DefaultTimeouts.TCPEstablished),
		TCPFinWait:     orDefault(sec(to.GetTcpFinSeconds()), dataplane.DefaultTimeouts.TCPFinWait),
		TCPClose:       orDefault(sec(to.GetTcpCloseSeconds()), dataplane.DefaultTimeouts.TCPClose),
		UDP:            orDefault(sec(to.GetUdpSeconds()), dataplane.DefaultTimeouts.UDP),
	}
	return dataplane.Service{
		ServiceKey:  sk,
		Scheduler:   sched,
		Timeouts:    t,
		Persistence: sec(vs.GetPersistenceSeconds()),
	}, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// realserverToDataplane converts a realserver as stored (its port filled
// in). DOWN makes it Unhealthy: no new connections; UNKNOWN is usable, so
// a service without checks (or a realserver not yet probed) takes traffic.
func realserverToDataplane(rs *raftlbv1.Realserver) (dataplane.Realserver, error) {
	a, err := netip.ParseAddr(rs.GetAddress())
	if err != nil {
		return dataplane.Realserver{}, fmt.Errorf("parse address: %w", err)
	}
	if rs.GetPort() == 0 || rs.GetPort() > 65535 {
		return dataplane.Realserver{}, fmt.Errorf("check port %d: %w", rs.GetPort(), dataplane.ErrInvalid)
	}
	r := dataplane.Realserver{
		Addr:      a,
		Port:      uint16(rs.GetPort()),
		Weight:    rs.GetWeight(),
		Drain:     rs.GetAdminState() == raftlbv1.AdminState_ADMIN_STATE_DRAIN,
		Unhealthy: rs.GetHealth() == raftlbv1.HealthState_HEALTH_STATE_DOWN,
	}
	switch rs.GetMethod() {
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR:
		r.Method = dataplane.DR
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN:
		r.Method = dataplane.TUN
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT:
		r.Method = dataplane.NAT
	default:
		return dataplane.Realserver{}, fmt.Errorf("check method %s: %w", rs.GetMethod(), dataplane.ErrInvalid)
	}
	return r, nil
}

func connService(k dataplane.ConnKey) dataplane.ServiceKey {
	return dataplane.ServiceKey{VIP: k.VIP.Addr(), Port: k.VIP.Port(), Proto: k.Proto}
}

var connStates = map[dataplane.ConnState]raftlbv1.ConnectionState{
	dataplane.StateSynRecv:     raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV,
	dataplane.StateEstablished: raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED,
	dataplane.StateFinWait:     raftlbv1.ConnectionState_CONNECTION_STATE_FIN_WAIT,
	dataplane.StateClose:       raftlbv1.ConnectionState_CONNECTION_STATE_CLOSE,
	dataplane.StateUDP:         raftlbv1.ConnectionState_CONNECTION_STATE_UDP,
}

func protocolToProto(p dataplane.Proto) raftlbv1.Protocol {
	switch p {
	case dataplane.TCP:
		return raftlbv1.Protocol_PROTOCOL_TCP
	case dataplane.UDP:
		return raftlbv1.Protocol_PROTOCOL_UDP
	}
	return raftlbv1.Protocol_PROTOCOL_UNSPECIFIED
}

// connectionToProto converts a table entry; it expires after its state's
// idle timeout (the IPVS defaults when its service is unknown here).
func connectionToProto(c dataplane.Conn, to dataplane.Timeouts, now time.Time) *raftlbv1.Connection {
	if to == (dataplane.Timeouts{}) {
		to = dataplane.DefaultTimeouts
	}
	idle := map[dataplane.ConnState]time.Duration{
		dataplane.StateSynRecv: to.TCPSynRecv, dataplane.StateEstablished: to.TCPEstablished,
		dataplane.StateFinWait: to.TCPFinWait, dataplane.StateClose: to.TCPClose, dataplane.StateUDP: to.UDP,
	}[c.State]
	expires := c.LastSeen.Add(idle).Sub(now)
	return &raftlbv1.Connection{
		Protocol:          protocolToProto(c.Key.Proto),
		ClientAddress:     c.Key.Client.Addr().String(),
		ClientPort:        uint32(c.Key.Client.Port()),
		Vip:               c.Key.VIP.Addr().String(),
		Vport:             uint32(c.Key.VIP.Port()),
		RealserverAddress: c.Real.Addr().String(),
		RealserverPort:    uint32(c.Real.Port()),
		State:             connStates[c.State],
		ExpiresInMs:       max(0, expires.Milliseconds()),
	}
}

// serviceName names a service in logs: "198.51.100.10:80/PROTOCOL_TCP".
func serviceName(k *raftlbv1.ServiceKey) string {
	return fmt.Sprintf("%s:%d/%s", k.GetVip(), k.GetPort(), k.GetProtocol())
}
