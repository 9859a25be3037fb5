package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	rshealth "github.com/raftlb/raftlb/server/health"
	"github.com/raftlb/raftlb/server/pki"
)

// Dataplane is the seam where the packet path plugs in. When a director has
// one, Run drives Reconcile from the replicated state: once at start and
// after every change, until ctx ends. Reconcile must converge the applied
// state to the desired one and be safe to call again and again.
type Dataplane interface {
	Reconcile(ctx context.Context, state *fsm.FSM) error
}

// Listeners lets a caller hand the director sockets it already holds (tests
// pick free ports this way). A nil listener is opened from the Config.
type Listeners struct {
	API, Raft, Metrics net.Listener
}

// Option customizes New.
type Option func(*options)

type options struct {
	listeners  Listeners
	dataplane  Dataplane
	fsmOptions []fsm.Option
}

// WithListeners makes the director serve on the given listeners instead of
// opening Config.APIAddr, RaftAddr and MetricsAddr. Ownership passes to the
// director, which closes them when Run returns.
func WithListeners(l Listeners) Option { return func(o *options) { o.listeners = l } }

// WithDataplane attaches the packet path; witnesses have none.
func WithDataplane(dp Dataplane) Option { return func(o *options) { o.dataplane = dp } }

// WithFSMOptions passes options to the state machine, e.g. the connection
// hook through which the dataplane installs replicated entries.
func WithFSMOptions(opts ...fsm.Option) Option {
	return func(o *options) { o.fsmOptions = append(o.fsmOptions, opts...) }
}

// Director is one member of the director cluster. New prepares it; Run
// starts Raft, the API and gossip and stops them all when its ctx ends.
type Director struct {
	cfg Config
	// base carries the id; each subsystem adds its component to it.
	base      *slog.Logger
	log       *slog.Logger
	dataplane Dataplane

	apiLis, raftLis, metricsLis net.Listener
	// self is what this director announces: its advertised addresses.
	self *raftlbv1.Director

	serverTLS, clientTLS *tls.Config // nil when Insecure
	gossipKey            []byte

	metrics *metrics
	fsm     *fsm.FSM
	applied *appliedFSM // fsm, as handed to Raft

	// Set by Run before anything can read them and never changed after.
	raft   *raft.Raft
	gossip *gossip
	fwd    *forwarder
	health *health.Server
	// checker is this director's realserver health checker (runHealth);
	// nil on a witness and until it starts.
	checker atomic.Pointer[rshealth.Checker]

	// ha is lease granting, reassignment, lease keeping and connection sync
	// (ha_wiring.go); set by New.
	ha *haNode
	// reconciled is the configuration generation the dataplane reconciler
	// last applied in full.
	reconciled atomic.Uint64

	// barrierTerm is the term in which this leader's barrier completed: from
	// then on its state machine holds every entry of earlier terms, so a read
	// after VerifyLeader is linearizable without a barrier of its own.
	barrierTerm atomic.Uint64
	// stopping is closed when shutdown begins; streams end on it so that a
	// graceful gRPC stop does not wait for watchers.
	stopping chan struct{}
	runOnce  sync.Once
}

// New validates cfg, loads certificates and the gossip key and binds the
// listeners, so that mistakes surface before Run. Run must be called to
// release the listeners.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Director, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validate config: %w", err)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("id", cfg.ID)
	d := &Director{
		cfg:       cfg,
		base:      log,
		log:       log.With("component", "director"),
		dataplane: o.dataplane,
		metrics:   newMetrics(),
		stopping:  make(chan struct{}),
	}
	d.metrics.reg.MustRegister(newHealthCollector(d))
	d.ha = newHANode(d)
	d.fsm = fsm.New(log, slices.Concat(o.fsmOptions, d.packetPathFSMOptions(), d.ha.fsmOptions())...)
	d.ha.bind()
	d.applied = &appliedFSM{FSM: d.fsm}
	if !cfg.Insecure {
		var err error
		if d.serverTLS, err = pki.ServerTLS(cfg.TLSCA, cfg.TLSCert, cfg.TLSKey); err != nil {
			return nil, fmt.Errorf("load server tls: %w", err)
		}
		if d.clientTLS, err = pki.ClientTLS(cfg.TLSCA, cfg.TLSCert, cfg.TLSKey); err != nil {
			return nil, fmt.Errorf("load client tls: %w", err)
		}
		if err := checkOwnCert(d.serverTLS); err != nil {
			return nil, err
		}
	}
	if cfg.GossipKeyFile != "" {
		k, err := ReadGossipKey(cfg.GossipKeyFile)
		if err != nil {
			return nil, err
		}
		d.gossipKey = k
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if err := d.listen(o.listeners); err != nil {
		return nil, err
	}
	d.self = &raftlbv1.Director{
		Id:          cfg.ID,
		ApiAddress:  advertised(cfg.APIAddr, d.apiLis.Addr(), cfg.RaftAddr),
		RaftAddress: advertised(cfg.RaftAddr, d.raftLis.Addr(), ""),
		Witness:     cfg.Witness,
	}
	front, err := frontAddr(cfg)
	if err != nil {
		d.closeListeners()
		return nil, err
	}
	d.self.FrontAddress = front
	return d, nil
}

// frontAddr is the configured front address, else the first IPv4 address
// of the front interface; a witness has none.
func frontAddr(cfg Config) (string, error) {
	if cfg.FrontAddr != "" || cfg.Iface == "" || cfg.Witness {
		return cfg.FrontAddr, nil
	}
	ifc, err := net.InterfaceByName(cfg.Iface)
	if err != nil {
		return "", fmt.Errorf("find front interface: %w", err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return "", fmt.Errorf("list addresses of %s: %w", cfg.Iface, err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
	}
	return "", fmt.Errorf("find front address: %s has no IPv4 address", cfg.Iface)
}

// checkOwnCert refuses to start with a certificate that other directors
// would refuse on the Raft transport and on InternalService.
func checkOwnCert(c *tls.Config) error {
	if len(c.Certificates) == 0 || c.Certificates[0].Leaf == nil {
		return errors.New("load server tls: no certificate")
	}
	id, err := pki.IdentityFromCert(c.Certificates[0].Leaf)
	if err != nil {
		return fmt.Errorf("check own certificate: %w", err)
	}
	if id.Role != pki.RoleDirector {
		return fmt.Errorf("check own certificate: role %q: %w", id.Role, ErrNotDirector)
	}
	return nil
}

func (d *Director) listen(l Listeners) error {
	d.apiLis, d.raftLis, d.metricsLis = l.API, l.Raft, l.Metrics
	var err error
	if d.apiLis == nil {
		if d.apiLis, err = net.Listen("tcp", d.cfg.APIAddr); err != nil {
			d.closeListeners()
			return fmt.Errorf("listen api: %w", err)
		}
	}
	if d.raftLis == nil {
		if d.raftLis, err = net.Listen("tcp", d.cfg.RaftAddr); err != nil {
			d.closeListeners()
			return fmt.Errorf("listen raft: %w", err)
		}
	}
	if d.metricsLis == nil && d.cfg.MetricsAddr != "" {
		if d.metricsLis, err = net.Listen("tcp", d.cfg.MetricsAddr); err != nil {
			d.closeListeners()
			return fmt.Errorf("listen metrics: %w", err)
		}
	}
	return nil
}

func (d *Director) closeListeners() {
	for _, l := range []net.Listener{d.apiLis, d.raftLis, d.metricsLis} {
		if l != nil {
			_ = l.Close() // Already closed by its server in the normal path.
		}
	}
}

// advertised is the address peers should dial: the configured one, with the
// bound port when the configuration said 0, and with fallbackHost's host when
// the configuration listens on all interfaces.
func advertised(configured string, bound net.Addr, fallback string) string {
	host, port, err := net.SplitHostPort(configured)
	if err != nil {
		return bound.String()
	}
	if port == "0" || port == "" {
		if ta, ok := bound.(*net.TCPAddr); ok {
			port = strconv.Itoa(ta.Port)
		}
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if fh, _, err := net.SplitHostPort(fallback); err == nil && fh != "" {
			host = fh
		}
	}
	return net.JoinHostPort(host, port)
}

// APIAddr is the advertised gRPC address (useful when the port was 0).
func (d *Director) APIAddr() string { return d.self.GetApiAddress() }

// RaftAddr is the advertised Raft address.
func (d *Director) RaftAddr() string { return d.self.GetRaftAddress() }

// MetricsAddr is the address /metrics is served on, or "" if disabled.
func (d *Director) MetricsAddr() string {
	if d.metricsLis == nil {
		return ""
	}
	return d.metricsLis.Addr().String()
}

// Run starts the director and blocks until ctx is cancelled, then shuts down
// gracefully: the API stops taking calls, a leader hands leadership over,
// gossip announces the departure, Raft and its stores close. It may be
// called once.
func (d *Director) Run(ctx context.Context) error {
	err := errors.New("run director: already ran")
	d.runOnce.Do(func() { err = d.run(ctx) })
	return err
}

func (d *Director) run(ctx context.Context) error {
	defer d.closeListeners()

	rs, err := d.startRaft()
	if err != nil {
		return err
	}
	defer rs.close(d.log)
	d.raft = rs.raft

	d.gossip, err = newGossip(d.cfg, d.gossipKey, d.self, d.base.With("component", "gossip"), d.ha.hint)
	if err != nil {
		d.shutdownRaft(rs)
		return err
	}
	d.self.GossipAddress = d.gossip.addr()
	d.fwd = newForwarder(d.clientTLS)
	defer d.fwd.close()

	srv := d.newGRPCServer()
	bg, cancelBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	serveErr := make(chan error, 2)
	wg.Go(func() {
		if err := srv.Serve(d.apiLis); err != nil {
			serveErr <- fmt.Errorf("serve api: %w", err)
		}
	})
	if d.metricsLis != nil {
		wg.Go(func() {
			if err := serveMetrics(bg, d.metricsLis, d.metrics.reg, d.log); err != nil {
				serveErr <- err
			}
		})
	}
	wg.Go(func() { d.leaderLoop(bg) })
	wg.Go(func() { d.ha.runReassigner(bg) })
	wg.Go(func() { d.announce(bg) })
	wg.Go(func() { d.gossip.joinLoop(bg, d.gossipCandidates) })
	wg.Go(func() { d.metricsLoop(bg) })
	wg.Go(func() { d.runReconciler(bg) })
	wg.Go(func() { d.runPacketPath(bg) })
	wg.Go(func() { d.runHealth(bg) })
	if d.cfg.Insecure {
		d.log.Warn("insecure mode: plaintext API and raft, every caller has all rights")
	}
	if d.gossipKey == nil {
		d.log.Warn("gossip is not encrypted")
	}
	d.log.Info("director started", "addr", d.self.GetApiAddress(), "raft_addr", d.self.GetRaftAddress(),
		"gossip_addr", d.self.GetGossipAddress(), "witness", d.cfg.Witness)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
		d.log.Error("director failing", "err", runErr)
	}

	// Graceful shutdown, in dependency order; a step that drags is logged.
	step := func(name string, fn func()) {
		start := time.Now()
		fn()
		if took := time.Since(start); took > time.Second {
			d.log.Warn("slow shutdown step", "step", name, "took", took)
		}
	}
	d.health.Shutdown()
	close(d.stopping)
	// Hand this director's addresses over while the API and Raft still run.
	step("release addresses", func() { d.ha.release(context.Background()) })
	// Transfer before the API stops: the other directors renew their leases
	// through the leader's API, and a GracefulStop may outlast a lease.
	step("transfer leadership", func() {
		if d.raft.State() == raft.Leader && d.otherVoters() {
			// Hand over now rather than make the others wait out an election timeout.
			if err := d.raft.LeadershipTransfer().Error(); err != nil {
				d.log.Warn("transfer leadership", "err", err)
			}
		}
	})
	d.ha.stepDown()
	step("stop api", func() { d.stopGRPC(srv) })
	cancelBG()
	step("stop loops", wg.Wait)
	step("leave gossip", func() { d.gossip.leave(time.Second) })
	step("stop raft", func() { d.shutdownRaft(rs) })
	d.log.Info("director stopped")
	return runErr
}

// otherVoters reports whether the Raft configuration has a voter besides this one.
func (d *Director) otherVoters() bool {
	f := d.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter && string(srv.ID) != d.cfg.ID {
			return true
		}
	}
	return false
}

// stopGRPC lets in-flight calls finish for a moment, then cuts the rest.
func (d *Director) stopGRPC(srv *grpc.Server) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(3 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		srv.Stop()
		<-done
	}
}

// raftStores are what Raft runs on; closed after Raft has shut down.
type raftStores struct {
	raft      *raft.Raft
	bolt      *raftboltdb.BoltStore
	transport *raft.NetworkTransport
}

func (rs *raftStores) close(log *slog.Logger) {
	if rs.transport != nil {
		if err := rs.transport.Close(); err != nil {
			log.Warn("close raft transport", "err", err)
		}
	}
	if rs.bolt != nil {
		if err := rs.bolt.Close(); err != nil {
			log.Warn("close raft store", "err", err)
		}
	}
}

func (d *Director) shutdownRaft(rs *raftStores) {
	if err := rs.raft.Shutdown().Error(); err != nil {
		d.log.Warn("shut down raft", "err", err)
	}
}

func (d *Director) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(d.cfg.ID)
	rc.HeartbeatTimeout = d.cfg.HeartbeatTimeout
	rc.ElectionTimeout = d.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = d.cfg.LeaderLeaseTimeout
	rc.CommitTimeout = d.cfg.CommitTimeout
	rc.SnapshotThreshold = d.cfg.SnapshotThreshold
	rc.SnapshotInterval = d.cfg.SnapshotInterval
	rc.Logger = newHCLog(d.base.With("component", "raft"), "raft", hclog.Warn)
	return rc
}

// startRaft opens the stores, bootstraps a new cluster once and starts Raft.
func (d *Director) startRaft() (*raftStores, error) {
	rc := d.raftConfig()
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("validate raft config: %w", err)
	}
	rs := &raftStores{}
	ok := false
	defer func() {
		if !ok {
			rs.close(d.log)
		}
	}()
	var err error
	rs.bolt, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(d.cfg.DataDir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open raft store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(d.cfg.DataDir, 2, rc.Logger.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	stream, err := newStreamLayer(d.raftLis, d.self.GetRaftAddress(), d.serverTLS, d.clientTLS,
		d.base.With("component", "raft"))
	if err != nil {
		return nil, err
	}
	rs.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  rc.Logger.Named("net"),
		// One RPC in flight turns pipelined replication off. raft v1.8's
		// pipeline can deadlock when a follower rejects an append (e.g. a
		// newer term during a leadership transfer): the sender parks on an
		// unbuffered channel nobody drains, replication to that follower stops
		// while heartbeats continue, and Shutdown never returns. Seen in our
		// failover tests; also hashicorp/raft#612 and grafana/pyroscope#5518.
		// Synchronous appends still batch up to MaxAppendEntries per RPC.
		MaxRPCsInFlight: 1,
	})

	existing, err := raft.HasExistingState(rs.bolt, rs.bolt, snaps)
	if err != nil {
		return nil, fmt.Errorf("check raft state: %w", err)
	}
	// Bootstrap exactly once: a node with any log, term or snapshot never
	// bootstraps again, whatever its flags say.
	if !existing && len(d.cfg.Peers) > 0 {
		conf := raft.Configuration{}
		ids := make([]string, 0, len(d.cfg.Peers))
		for id := range d.cfg.Peers {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			addr := d.cfg.Peers[id]
			if id == d.cfg.ID {
				addr = d.self.GetRaftAddress()
			}
			conf.Servers = append(conf.Servers, raft.Server{
				Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr),
			})
		}
		if err := raft.BootstrapCluster(rc, rs.bolt, rs.bolt, snaps, rs.transport, conf); err != nil {
			return nil, fmt.Errorf("bootstrap raft: %w", err)
		}
		d.log.Info("bootstrapped raft cluster", "peers", len(ids))
	}
	rs.raft, err = raft.NewRaft(rc, d.applied, rs.bolt, rs.bolt, snaps, rs.transport)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	ok = true
	return rs, nil
}

// leaderLoop follows this node's leadership: after every win it runs a
// barrier, so the state machine holds all earlier entries before
// linearizable reads are served; it also counts leader changes.
func (d *Director) leaderLoop(ctx context.Context) {
	obsCh := make(chan raft.Observation, 16)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	d.raft.RegisterObserver(obs)
	defer d.raft.DeregisterObserver(obs)
	var last raft.ServerID
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-obsCh:
			lo := o.Data.(raft.LeaderObservation)
			d.log.Info("raft leader changed", "leader", string(lo.LeaderID), "term", d.raft.CurrentTerm())
			// Count arrivals of a different leader, not the gaps between leaders.
			if lo.LeaderID != "" && lo.LeaderID != last {
				d.metrics.leaderChanges.Inc()
				last = lo.LeaderID
			}
		case isLeader := <-d.raft.LeaderCh():
			if !isLeader {
				d.log.Info("lost raft leadership")
				d.ha.stepDown()
				continue
			}
			d.log.Info("won raft leadership", "term", d.raft.CurrentTerm())
			// LeaderCh keeps only the latest value: a loss followed by a new
			// win arrives as one true. The grantor's bookkeeping is of the
			// old term either way, so it is dropped before the new barrier.
			d.ha.stepDown()
			d.establishLeadership(ctx)
		}
	}
}

// establishLeadership retries the barrier until it succeeds, leadership is
// lost or ctx ends.
func (d *Director) establishLeadership(ctx context.Context) {
	for ctx.Err() == nil && d.raft.State() == raft.Leader {
		term := d.raft.CurrentTerm()
		err := waitFuture(ctx, d.raft.Barrier(d.cfg.WriteTimeout))
		if err == nil {
			d.barrierTerm.Store(term)
			d.ha.becomeLeader(term)
			return
		}
		d.log.Warn("leader barrier", "err", err)
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return
		}
	}
}

// announce records this director's addresses in the replicated state,
// through the leader, retrying until it sticks.
func (d *Director) announce(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		cmd := &raftlbv1.Command{Op: &raftlbv1.Command_UpsertDirector{
			UpsertDirector: &raftlbv1.UpsertDirector{Director: d.self},
		}}
		_, err := d.propose(ctx, cmd)
		if err == nil {
			d.log.Info("announced director", "addr", d.self.GetApiAddress())
			return
		}
		var fe *fsm.Error
		if errors.As(err, &fe) {
			d.log.Error("announce director: rejected", "err", err)
			return
		}
		d.log.Debug("announce director", "err", err)
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// gossipCandidates are the memberlist addresses worth joining: the
// configured ones, each peer's Raft host on the gossip port when none are
// configured, and every director the replicated state knows.
func (d *Director) gossipCandidates() []string {
	var out []string
	if len(d.cfg.GossipPeers) > 0 {
		out = append(out, d.cfg.GossipPeers...)
	} else if _, port, err := net.SplitHostPort(d.cfg.GossipAddr); err == nil && port != "0" {
		for id, addr := range d.cfg.Peers {
			if host, _, err := net.SplitHostPort(addr); err == nil && id != d.cfg.ID {
				out = append(out, net.JoinHostPort(host, port))
			}
		}
	}
	for _, dir := range d.fsm.Directors() {
		if dir.GetId() != d.cfg.ID && dir.GetGossipAddress() != "" {
			out = append(out, dir.GetGossipAddress())
		}
	}
	return out
}

// metricsLoop samples Raft and the state machine for the gauges.
func (d *Director) metricsLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		d.metrics.observeRaft(d.raft)
		d.metrics.generation.Set(float64(d.fsm.Generation()))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reconciledGen is the configuration generation the dataplane holds: what
// the reconciler last applied, or everything when there is no dataplane.
func (d *Director) reconciledGen() uint64 {
	if d.dataplane == nil {
		return d.fsm.Generation()
	}
	return d.reconciled.Load()
}

// runReconciler drives the dataplane from the replicated state; without a
// dataplane (a witness, or before the packet path is wired) it does nothing.
func (d *Director) runReconciler(ctx context.Context) {
	if d.dataplane == nil {
		return
	}
	for {
		changed := d.fsm.Changed()
		gen := d.fsm.Generation()
		if err := d.dataplane.Reconcile(ctx, d.fsm); err != nil && ctx.Err() == nil {
			d.log.Error("reconcile dataplane", "err", err)
		} else if err == nil {
			d.reconciled.Store(gen)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func (d *Director) newGRPCServer() *grpc.Server {
	auth := &authorizer{insecure: d.cfg.Insecure}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(d.observeUnary, statusUnary, auth.unary),
		grpc.ChainStreamInterceptor(d.observeStream, statusStream, auth.stream),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if d.serverTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(d.serverTLS)))
	}
	srv := grpc.NewServer(opts...)
	raftlbv1.RegisterLoadBalancerServiceServer(srv, &lbService{d: d})
	raftlbv1.RegisterClusterServiceServer(srv, &clusterService{d: d})
	raftlbv1.RegisterAgentServiceServer(srv, &agentService{d: d})
	raftlbv1.RegisterConnectionServiceServer(srv, &connectionService{d: d})
	raftlbv1.RegisterInternalServiceServer(srv, &internalService{d: d})
	d.health = health.NewServer()
	d.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, d.health)
	reflection.Register(srv)
	return srv
}

// waitFuture waits for a Raft future, or for ctx. Raft resolves every
// future eventually (at the latest on shutdown), so the helper goroutine
// always ends.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("wait for raft: %w", ctx.Err())
	}
}

// sleepCtx waits for d or ctx; it reports whether ctx is still alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
