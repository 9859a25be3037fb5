package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// Config is what an agent needs to run.
type Config struct {
	// ID is the realserver's id; it must equal the client certificate's CN.
	ID string
	// Directors are the gRPC API addresses (host:port) of the directors; the
	// agent uses one at a time and fails over to the next.
	Directors []string
	// TLS is the client TLS config (CA and client certificate). Required
	// unless Insecure.
	TLS *tls.Config
	// Insecure dials without TLS. Never in production.
	Insecure bool
	// FacingIfaces are the interfaces clients' traffic arrives on and replies
	// leave by: ARP sysctls, rp_filter, BPF decap and the MSS table use them.
	FacingIfaces []string
	// RegisterIfaces are the interfaces whose names, MACs and IPv4 addresses
	// the agent registers; empty means every interface but lo and the agent's
	// tunnel. Directors accept only addresses in the certificate's IP SANs.
	RegisterIfaces []string
	// StateDir holds the ownership record (default DefaultStateDir).
	StateDir string
	// Logger receives the agent's logs (default: discarded).
	Logger *slog.Logger
	// Decapper decapsulates TUN traffic where the kernel has no ipip
	// (default BPFDecapper).
	Decapper Decapper

	// NATTable is the routing table of the NAT return route (default 4242).
	NATTable int
	// MSSTable is the routing table replies from TUN VIPs use (default 4243).
	MSSTable int
	// RulePriority is the priority of the agent's source rules (default 4242).
	RulePriority int
	// TunnelMSS is the MSS advertised for TUN VIPs; zero means the facing
	// interface's MTU minus the 20-byte tunnel header and 40 bytes of TCP/IP.
	TunnelMSS int
	// TunnelName names the ipip device (default DefaultTunnelName).
	TunnelName string
	// ResyncInterval is the period of drift repair (default 2s).
	ResyncInterval time.Duration
	// BackoffMax caps the reconnect backoff (default 2s).
	BackoffMax time.Duration
	// HeartbeatInterval is the longest time between two status reports, so
	// directors can tell a live agent from a dead one (default 10s).
	HeartbeatInterval time.Duration

	// kernel replaces the netlink Kernel in tests.
	kernel Kernel
}

// Defaults fills every unset field with its default.
func (c *Config) Defaults() {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Decapper == nil {
		c.Decapper = BPFDecapper{}
	}
	if c.NATTable == 0 {
		c.NATTable = DefaultNATTable
	}
	if c.MSSTable == 0 {
		c.MSSTable = DefaultMSSTable
	}
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.TunnelName == "" {
		c.TunnelName = DefaultTunnelName
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = 2 * time.Second
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 2 * time.Second
	}
}

// Validate reports every invalid field, by name.
func (c *Config) Validate() error {
	var errs []error
	if c.ID == "" {
		errs = append(errs, errors.New("id: required"))
	}
	if len(c.Directors) == 0 {
		errs = append(errs, errors.New("directors: at least one required"))
	}
	for i, d := range c.Directors {
		if _, _, err := net.SplitHostPort(d); err != nil {
			errs = append(errs, fmt.Errorf("directors[%d]: %q is not host:port", i, d))
		}
	}
	if c.TLS == nil && !c.Insecure {
		errs = append(errs, errors.New("tls: required unless insecure"))
	}
	if len(c.FacingIfaces) == 0 {
		errs = append(errs, errors.New("facing-ifaces: at least one required"))
	}
	for i, f := range c.FacingIfaces {
		if !validIfName(f) || f == "all" || f == "default" || f == "lo" {
			errs = append(errs, fmt.Errorf("facing-ifaces[%d]: %q is not an interface name", i, f))
		}
		if slices.Index(c.FacingIfaces, f) != i {
			errs = append(errs, fmt.Errorf("facing-ifaces[%d]: %q appears twice", i, f))
		}
	}
	for i, f := range c.RegisterIfaces {
		if !validIfName(f) {
			errs = append(errs, fmt.Errorf("register-ifaces[%d]: %q is not an interface name", i, f))
		}
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state-dir: required"))
	}
	for name, t := range map[string]int{"nat-table": c.NATTable, "mss-table": c.MSSTable} {
		// 253-255 are the kernel's default, main and local tables.
		if t <= 0 || (t >= 253 && t <= 255) {
			errs = append(errs, fmt.Errorf("%s: %d is reserved or invalid", name, t))
		}
	}
	if c.NATTable == c.MSSTable {
		errs = append(errs, errors.New("mss-table: must differ from nat-table"))
	}
	if c.RulePriority <= 0 || c.RulePriority >= 32766 {
		errs = append(errs, fmt.Errorf("rule-priority: %d must be between 1 and 32765 (before the main table)", c.RulePriority))
	}
	if c.TunnelMSS != 0 && (c.TunnelMSS < minMSS || c.TunnelMSS > 65495) {
		errs = append(errs, fmt.Errorf("tunnel-mss: %d is out of range", c.TunnelMSS))
	}
	if !validIfName(c.TunnelName) {
		errs = append(errs, fmt.Errorf("tunnel-name: %q is not an interface name", c.TunnelName))
	}
	if c.HeartbeatInterval <= 0 {
		errs = append(errs, errors.New("heartbeat-interval: must be positive"))
	}
	if c.ResyncInterval <= 0 {
		errs = append(errs, errors.New("resync-interval: must be positive"))
	}
	if c.BackoffMax <= 0 {
		errs = append(errs, errors.New("backoff-max: must be positive"))
	}
	return errors.Join(errs...)
}

func validIfName(s string) bool {
	return s != "" && len(s) < 16 && !strings.ContainsAny(s, "/ \t\n:") && s != "." && s != ".."
}

func (c *Config) reconcilerConfig() reconcilerConfig {
	return reconcilerConfig{
		FacingIfaces: c.FacingIfaces,
		NATTable:     c.NATTable,
		MSSTable:     c.MSSTable,
		RulePriority: c.RulePriority,
		TunnelMSS:    c.TunnelMSS,
		TunnelName:   c.TunnelName,
	}
}

// Run registers with a director, applies every generation of its desired
// config and reports the outcome, failing over between directors, until ctx
// is cancelled. It keeps applying the last config (from its state dir, across
// restarts) while no director is reachable, and repairs drift every
// ResyncInterval. On return the kernel config stays in place: only Cleanup
// removes it. Run returns nil when ctx is cancelled.
func Run(ctx context.Context, cfg Config) error {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("validate agent config: %w", err)
	}
	unlock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	k := cfg.kernel
	if k == nil {
		release, err := claimNetns()
		if err != nil {
			return err
		}
		defer release()
		nk, err := NewKernel()
		if err != nil {
			return err
		}
		defer nk.Close()
		k = nk
	}
	log := cfg.Logger.With("component", "agent")
	rec, err := newReconciler(k, cfg.Decapper, stateStore{dir: cfg.StateDir}, cfg.reconcilerConfig(), log)
	if err != nil {
		return err
	}
	a := &agent{cfg: cfg, k: k, rec: rec, log: log, updates: make(chan update), box: newStatusBox()}
	return a.run(ctx)
}

// agent is the running client: one goroutine (run) owns the reconciler, one
// (connect) owns the connection to a director.
type agent struct {
	cfg     Config
	k       Kernel
	rec     *reconciler
	log     *slog.Logger
	updates chan update
	box     *statusBox
	// rejected is why the newest generation was refused; it is reported with
	// every status until a valid generation arrives.
	rejected error
}

// update is one generation from the watch: a config, or why it was refused.
type update struct {
	desired Desired
	err     error
}

func (a *agent) run(ctx context.Context) error {
	// The kept config is applied before connecting, so the first watch can
	// resume after its generation.
	desired, have := a.rec.lastDesired()
	if have {
		a.log.Info("applying config kept from the last run", "generation", desired.Generation)
		a.apply(desired)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.connect(ctx)
	}()
	defer wg.Wait()

	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping; kernel config stays in place")
			return nil
		case u := <-a.updates:
			if u.err != nil {
				a.log.Warn("rejected config", "err", u.err)
				a.rejected = u.err
				if have {
					a.apply(desired)
				}
				continue
			}
			d := u.desired
			if have && d.Generation < desired.Generation {
				a.log.Warn("ignoring config older than the applied one", "generation", d.Generation, "applied", desired.Generation)
				continue
			}
			desired, have, a.rejected = d, true, nil
			a.apply(desired)
		case <-tick.C:
			if have {
				a.apply(desired)
			}
		}
	}
}

func (a *agent) apply(d Desired) {
	st := a.rec.reconcile(d)
	if a.rejected != nil {
		st.Err = errors.Join(st.Err, a.rejected)
	}
	if st.Err != nil {
		a.log.Warn("reconcile incomplete", "generation", st.Generation, "err", st.Err)
	}
	a.box.set(st)
}

// connect keeps a session with one director at a time, moving to the next
// one with capped exponential backoff when a session ends.
func (a *agent) connect(ctx context.Context) {
	const base = 100 * time.Millisecond
	backoff := base
	for i := 0; ; i++ {
		addr := a.cfg.Directors[i%len(a.cfg.Directors)]
		healthy, err := a.session(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if healthy {
			backoff = base
		}
		// Full jitter keeps many agents from reconnecting in lockstep.
		wait := backoff/2 + rand.N(backoff/2+1)
		a.log.Warn("director session ended", "director", addr, "err", err, "retry_in", wait)
		backoff = min(backoff*2, a.cfg.BackoffMax)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (a *agent) dialOptions() []grpc.DialOption {
	creds := insecure.NewCredentials()
	if !a.cfg.Insecure {
		creds = credentials.NewTLS(a.cfg.TLS)
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// A director that vanishes without closing TCP must not hold the watch
		// forever. Directors must permit pings this often (their enforcement
		// policy allows one per 10 s).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	}
}

// errStale is the session's reason to end when the director stops answering
// reports.
var errStale = errors.New("director does not accept status reports")

// session registers with one director, watches its config and reports
// status until the stream or ctx ends. healthy says whether a config arrived.
func (a *agent) session(ctx context.Context, addr string) (healthy bool, err error) {
	conn, err := grpc.NewClient(addr, a.dialOptions()...)
	if err != nil {
		return false, fmt.Errorf("dial director %s: %w", addr, err)
	}
	defer conn.Close()
	client := raftlbv1.NewAgentServiceClient(conn)
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	ifaces, err := a.interfaces()
	if err != nil {
		return false, err
	}
	rctx, rcancel := context.WithTimeout(sctx, 5*time.Second)
	_, err = client.Register(rctx, &raftlbv1.RegisterRequest{Id: a.cfg.ID, Interfaces: ifaces})
	rcancel()
	if err != nil {
		return false, fmt.Errorf("register with %s: %w", addr, err)
	}
	a.log.Info("registered", "director", addr)

	var after uint64
	if st, ok := a.box.get(); ok {
		after = st.Generation
	}
	stream, err := client.WatchConfig(sctx, &raftlbv1.WatchConfigRequest{Id: a.cfg.ID, AfterGeneration: after})
	if err != nil {
		return false, fmt.Errorf("watch config on %s: %w", addr, err)
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.report(sctx, cancel, client)
	}()
	defer wg.Wait()
	defer cancel(nil)

	for {
		m, err := stream.Recv()
		if err != nil {
			if cause := context.Cause(sctx); cause != nil && ctx.Err() == nil {
				err = cause
			}
			return healthy, fmt.Errorf("receive config from %s: %w", addr, err)
		}
		healthy = true
		var u update
		u.desired, u.err = DesiredFromProto(m)
		if u.err != nil {
			u.err = fmt.Errorf("generation %d: %w", m.GetGeneration(), u.err)
		}
		select {
		case a.updates <- u:
		case <-sctx.Done():
			return healthy, context.Cause(sctx)
		}
	}
}

// report sends the latest status now, after every change and at least
// every HeartbeatInterval (the directors' sign of life). A director that is
// unreachable for reports ends the session so the agent fails over.
func (a *agent) report(ctx context.Context, cancel context.CancelCauseFunc, client raftlbv1.AgentServiceClient) {
	heartbeat := time.NewTicker(a.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	for {
		if st, ok := a.box.get(); ok {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := client.ReportStatus(rctx, st.toProto(a.cfg.ID))
			rcancel()
			switch status.Code(err) {
			case codes.OK:
			case codes.Unavailable, codes.DeadlineExceeded:
				if ctx.Err() == nil {
					cancel(fmt.Errorf("%w: %w", errStale, err))
				}
				return
			default:
				if ctx.Err() != nil {
					return
				}
				a.log.Warn("report status", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-a.box.changed():
		case <-heartbeat.C:
		}
	}
}

// interfaces describes the realserver's links for Register: those named in
// RegisterIfaces, or all but lo and the agent's own tunnel.
func (a *agent) interfaces() ([]*raftlbv1.Interface, error) {
	links, err := a.k.Links()
	if err != nil {
		return nil, err
	}
	var out []*raftlbv1.Interface
	for _, l := range links {
		if len(a.cfg.RegisterIfaces) > 0 && !slices.Contains(a.cfg.RegisterIfaces, l.Name) {
			continue
		}
		if l.Name == "lo" || l.Name == a.cfg.TunnelName {
			continue
		}
		ifc := &raftlbv1.Interface{Name: l.Name, Mac: l.MAC}
		for _, p := range l.Addrs {
			ifc.Addresses = append(ifc.Addresses, p.Addr().String())
		}
		out = append(out, ifc)
	}
	return out, nil
}

// statusBox holds the latest status and signals changes; the reporter reads
// only the newest, so a slow director never queues stale reports.
type statusBox struct {
	mu  sync.Mutex
	st  Status
	has bool
	ch  chan struct{}
}

func newStatusBox() *statusBox { return &statusBox{ch: make(chan struct{}, 1)} }

func (b *statusBox) set(st Status) {
	b.mu.Lock()
	same := b.has && sameStatus(b.st, st)
	b.st, b.has = st, true
	b.mu.Unlock()
	if same {
		return
	}
	select {
	case b.ch <- struct{}{}:
	default:
	}
}

func (b *statusBox) get() (Status, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st, b.has
}

func (b *statusBox) changed() <-chan struct{} { return b.ch }

func sameStatus(x, y Status) bool {
	errStr := func(e error) string {
		if e == nil {
			return ""
		}
		return e.Error()
	}
	return x.Generation == y.Generation && x.DecapMode == y.DecapMode && errStr(x.Err) == errStr(y.Err) && slices.Equal(x.VIPs, y.VIPs)
}

// Cleanup removes everything the agent recorded in stateDir as its own:
// rules, routes, BPF decapsulation, VIPs, sysctls (restored) and its tunnel,
// then the record itself. It is for a deregistered realserver; Run never
// does it. A nil logger discards.
func Cleanup(stateDir string, logger *slog.Logger) error {
	k, err := NewKernel()
	if err != nil {
		return err
	}
	defer k.Close()
	return cleanup(k, stateDir, BPFDecapper{}, logger)
}

func cleanup(k Kernel, stateDir string, decap Decapper, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	unlock, err := lockStateDir(stateDir)
	if err != nil {
		return err
	}
	defer unlock()
	store := stateStore{dir: stateDir}
	r, err := newReconciler(k, decap, store, reconcilerConfig{}, logger.With("component", "agent"))
	if err != nil {
		return err
	}
	st := r.reconcile(Desired{})
	if st.Err != nil {
		return fmt.Errorf("clean up agent config: %w", st.Err)
	}
	if !r.rec.empty() {
		return errors.New("clean up agent config: objects remain in the record")
	}
	return store.remove()
}
