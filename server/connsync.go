package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/ha"
)

// connTable is the part of the packet path that connection sync reads and
// writes; *dataplane.Dataplane has it.
type connTable interface {
	Connections() ([]dataplane.Conn, error)
	InstallConnections(conns []dataplane.Conn) error
	DeleteConnections(keys []dataplane.ConnKey) error
}

// maxPendingEntries bounds the replicated connection changes waiting to be
// installed; beyond it the installer drops them and re-reads the whole
// replicated table instead, so the Raft apply goroutine never waits.
const maxPendingEntries = 1 << 20

// connSync replicates this director's connection table and installs the
// replicated one: the dataplane's events go through the batcher into Raft;
// the state machine's connection hook hands every committed change to the
// installer's queue, and the installer's goroutine writes it into the
// dataplane. Entries of VIPs this director answers for are left alone (its
// own table is the truth for them); every other entry is installed, so a
// standby already holds every established connection when it takes over,
// and entries the owner dropped are deleted.
type connSync struct {
	dp   connTable
	fsm  *fsm.FSM
	b    *ha.Batcher
	log  *slog.Logger
	gen  func() uint64 // the configuration generation the dataplane has reconciled
	m    *connSyncMetrics
	owns func(netip.Addr) bool // set before run: Keeper.Owns

	mu        sync.Mutex
	queue     []fsm.ConnChange
	pending   int    // entries in queue
	reset     bool   // re-read the whole table
	resyncReq uint64 // resyncs asked for by catchUp
	wake      chan struct{}

	enq        atomic.Uint64 // changes handed over by the hook
	done       atomic.Uint64 // changes installed (or superseded by a reset)
	resyncDone atomic.Uint64 // resyncReq as of the last full resync
	skipped    atomic.Bool   // entries were skipped since the last full resync
	// lagMs is the last measured lag from proposal to installed.
	lagMs atomic.Int64
}

type connSyncMetrics struct {
	installed prometheus.Counter
	deleted   prometheus.Counter
	failed    prometheus.Counter
	resets    prometheus.Counter
	lag       prometheus.Histogram
}

func newConnSyncMetrics(reg prometheus.Registerer) *connSyncMetrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "raftlb", Subsystem: "ha", Name: name, Help: help})
	}
	m := &connSyncMetrics{
		installed: counter("connsync_installed_total", "Replicated connection entries written into this director's dataplane."),
		deleted:   counter("connsync_deleted_total", "Replicated connection deletions applied to this director's dataplane."),
		failed:    counter("connsync_install_failures_total", "Replicated connection entries the dataplane could not take (e.g. service not configured yet)."),
		resets:    counter("connsync_install_resets_total", "Full re-reads of the replicated connection table (snapshot restore, queue overflow, late configuration)."),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "raftlb", Subsystem: "ha",
			Name: "connsync_install_lag_seconds", Help: "From the proposal of a connection batch to its entries installed here.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
	}
	if reg != nil {
		reg.MustRegister(m.installed, m.deleted, m.failed, m.resets, m.lag)
	}
	return m
}

func newConnSync(d *Director, dp connTable, m *ha.Metrics) *connSync {
	s := &connSync{dp: dp, log: d.base.With("component", "connsync-install"), gen: d.reconciledGen,
		m: newConnSyncMetrics(d.metrics.reg), wake: make(chan struct{}, 1)}
	s.b = ha.NewBatcher(ha.BatcherConfig{
		// Batches are proposed one at a time, so under load a batch's size
		// is the throughput per commit round: 16k entries (about 500 KiB)
		// carry well over 100,000 connections/s at a few tens of ms a round.
		MaxEntries: 16384,
		MaxBytes:   1 << 20,
		Owns:       func(a netip.Addr) bool { return s.owns != nil && s.owns(a) },
		Live:       s.live,
	}, batchProposer{d}, d.base, m)
	return s
}

// hook is the state machine's connection hook: it queues the change and
// returns at once.
func (s *connSync) hook(ch fsm.ConnChange) {
	s.mu.Lock()
	switch {
	case ch.Reset || s.reset || s.pending+len(ch.Upserts)+len(ch.Deletes) > maxPendingEntries:
		s.reset = true
		s.queue, s.pending = nil, 0
	default:
		s.queue = append(s.queue, ch)
		s.pending += len(ch.Upserts) + len(ch.Deletes)
	}
	s.mu.Unlock()
	s.enq.Add(1)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// onEvents hands the dataplane's connection events to the batcher; it never
// blocks.
func (s *connSync) onEvents(evs []dataplane.Event) { s.b.Enqueue(eventsToHA(evs)) }

// install is the installer's goroutine: it owns the writes of replicated
// entries into the dataplane. Entries the dataplane skips because their
// service or realserver is not configured here yet (a restarted director
// replays the log before its first reconcile) are retried with a full
// resync once the reconciler has moved past the generation they failed at.
func (s *connSync) install(ctx context.Context) {
	var failedAt uint64 // generation at the last skip, while s.skipped
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
			if !s.skipped.Load() || s.gen() == failedAt {
				continue
			}
			s.mu.Lock()
			s.reset = true
			s.mu.Unlock()
		}
		s.mu.Lock()
		q, reset := s.queue, s.reset
		s.queue, s.pending, s.reset = nil, 0, false
		target, resyncTarget := s.enq.Load(), s.resyncReq
		s.mu.Unlock()
		gen := s.gen()
		ok := true
		for _, ch := range q {
			ok = s.apply(ch) && ok
		}
		if reset {
			// The whole table was read again: earlier skips are settled.
			ok = s.resync()
			s.skipped.Store(false)
			s.resyncDone.Store(resyncTarget)
		}
		if !ok {
			s.skipped.Store(true)
			failedAt = gen
		}
		s.done.Store(target)
	}
}

// catchUp returns once every replicated entry the dataplane can take is
// installed: the changes queued when it was called, and, if entries were
// skipped for lack of configuration, a full resync made after it was called
// (so after the reconcile the caller has waited for). Entries that still do
// not fit the configuration then (e.g. of a removed realserver) do not hold
// it up.
func (s *connSync) catchUp(ctx context.Context) error {
	seq := s.enq.Load()
	var want uint64
	if s.skipped.Load() {
		s.mu.Lock()
		if s.resyncReq == s.resyncDone.Load() {
			s.resyncReq++ // else the pending one will do
		}
		want = s.resyncReq
		s.reset = true
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for s.done.Load() < seq || s.resyncDone.Load() < want {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for replicated connections: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// apply writes one change; it reports false if entries were skipped for
// lack of configuration. (A flush's entries not in the replicated table are
// the packet path's hook's business.)
func (s *connSync) apply(ch fsm.ConnChange) bool {
	if len(ch.Deletes) > 0 {
		keys := make([]dataplane.ConnKey, len(ch.Deletes))
		for i, e := range ch.Deletes {
			keys[i] = connKeyFromEntry(e)
		}
		if err := s.dp.DeleteConnections(keys); err != nil {
			s.log.Warn("delete replicated connections", "err", err)
		} else {
			s.m.deleted.Add(float64(len(keys)))
		}
	}
	ok := s.installEntries(ch.Upserts)
	if ch.UnixNano != 0 && len(ch.Upserts) > 0 {
		lag := time.Since(time.Unix(0, ch.UnixNano))
		s.lagMs.Store(lag.Milliseconds())
		s.m.lag.Observe(lag.Seconds())
	}
	return ok
}

// installEntries writes the entries of VIPs this director does not answer
// for; it reports false if the dataplane skipped some for lack of
// configuration.
func (s *connSync) installEntries(es []*raftlbv1.ConnEntry) bool {
	conns := make([]dataplane.Conn, 0, len(es))
	for _, e := range es {
		c := connFromEntry(e)
		if s.owns != nil && s.owns(c.Key.VIP.Addr()) {
			continue
		}
		conns = append(conns, c)
	}
	if len(conns) == 0 {
		return true
	}
	err := s.dp.InstallConnections(conns)
	switch {
	case err == nil:
		s.m.installed.Add(float64(len(conns)))
	case errors.Is(err, dataplane.ErrUnknownRealserver):
		s.m.failed.Inc()
		s.log.Debug("install replicated connections", "err", err)
		return false
	default:
		s.m.failed.Inc()
		s.log.Warn("install replicated connections", "err", err)
	}
	return true
}

// resync makes the dataplane's table match the replicated one for every VIP
// this director does not answer for: entries the replicated table lacks are
// deleted, the others installed.
func (s *connSync) resync() bool {
	s.m.resets.Inc()
	want := s.fsm.Connections()
	keep := make(map[dataplane.ConnKey]bool, len(want))
	for _, e := range want {
		keep[connKeyFromEntry(e)] = true
	}
	local, err := s.dp.Connections()
	if err != nil {
		s.log.Warn("read connection table", "err", err)
	}
	var doomed []dataplane.ConnKey
	for _, c := range local {
		if !keep[c.Key] && (s.owns == nil || !s.owns(c.Key.VIP.Addr())) {
			doomed = append(doomed, c.Key)
		}
	}
	if len(doomed) > 0 {
		if err := s.dp.DeleteConnections(doomed); err != nil {
			s.log.Warn("delete stale connections", "err", err)
		}
	}
	return s.installEntries(want)
}

// live is the batcher's view of the local table, for its resyncs.
func (s *connSync) live(context.Context) ([]*raftlbv1.ConnEntry, error) {
	conns, err := s.dp.Connections()
	if err != nil {
		return nil, fmt.Errorf("read connection table: %w", err)
	}
	out := make([]*raftlbv1.ConnEntry, 0, len(conns))
	for _, c := range conns {
		out = append(out, entryFromConn(c))
	}
	return out, nil
}

// --- conversions between the dataplane's connections and replicated entries ---

var (
	protoToWire = map[dataplane.Proto]raftlbv1.Protocol{dataplane.TCP: raftlbv1.Protocol_PROTOCOL_TCP, dataplane.UDP: raftlbv1.Protocol_PROTOCOL_UDP}
	protoFrom   = map[raftlbv1.Protocol]dataplane.Proto{raftlbv1.Protocol_PROTOCOL_TCP: dataplane.TCP, raftlbv1.Protocol_PROTOCOL_UDP: dataplane.UDP}
	stateToWire = map[dataplane.ConnState]raftlbv1.ConnectionState{
		dataplane.StateSynRecv:     raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV,
		dataplane.StateEstablished: raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED,
		dataplane.StateFinWait:     raftlbv1.ConnectionState_CONNECTION_STATE_FIN_WAIT,
		dataplane.StateClose:       raftlbv1.ConnectionState_CONNECTION_STATE_CLOSE,
		dataplane.StateUDP:         raftlbv1.ConnectionState_CONNECTION_STATE_UDP,
	}
	stateFrom = func() map[raftlbv1.ConnectionState]dataplane.ConnState {
		m := make(map[raftlbv1.ConnectionState]dataplane.ConnState, len(stateToWire))
		for k, v := range stateToWire {
			m[v] = k
		}
		return m
	}()
)

// entryFromConn converts a dataplane connection to its replicated form.
func entryFromConn(c dataplane.Conn) *raftlbv1.ConnEntry {
	e := &raftlbv1.ConnEntry{
		Protocol:       protoToWire[c.Key.Proto],
		ClientIp:       fsm.IPv4ToUint32(c.Key.Client.Addr()),
		ClientPort:     uint32(c.Key.Client.Port()),
		Vip:            fsm.IPv4ToUint32(c.Key.VIP.Addr()),
		Vport:          uint32(c.Key.VIP.Port()),
		RealserverIp:   fsm.IPv4ToUint32(c.Real.Addr()),
		RealserverPort: uint32(c.Real.Port()),
		State:          stateToWire[c.State],
	}
	if !c.LastSeen.IsZero() {
		e.LastSeenUnixMs = c.LastSeen.UnixMilli()
	}
	return e
}

func connKeyFromEntry(e *raftlbv1.ConnEntry) dataplane.ConnKey {
	return dataplane.ConnKey{
		Proto:  protoFrom[e.GetProtocol()],
		Client: netip.AddrPortFrom(fsm.Uint32ToIPv4(e.GetClientIp()), uint16(e.GetClientPort())),
		VIP:    netip.AddrPortFrom(fsm.Uint32ToIPv4(e.GetVip()), uint16(e.GetVport())),
	}
}

// connFromEntry converts a replicated entry for InstallConnections. Its
// last-seen time is the owner's wall clock; a replica compares it with its
// own, so directors' clocks should agree to well within the idle timeouts.
func connFromEntry(e *raftlbv1.ConnEntry) dataplane.Conn {
	c := dataplane.Conn{
		Key:   connKeyFromEntry(e),
		Real:  netip.AddrPortFrom(fsm.Uint32ToIPv4(e.GetRealserverIp()), uint16(e.GetRealserverPort())),
		State: stateFrom[e.GetState()],
	}
	if ms := e.GetLastSeenUnixMs(); ms > 0 {
		c.LastSeen = time.UnixMilli(ms)
	} else {
		c.LastSeen = time.Now()
	}
	return c
}

// eventsToHA converts the dataplane's events for the batcher.
func eventsToHA(evs []dataplane.Event) []ha.ConnEvent {
	out := make([]ha.ConnEvent, 0, len(evs))
	for _, ev := range evs {
		var k ha.ConnEventKind
		switch ev.Type {
		case dataplane.EventNew:
			k = ha.ConnNew
		case dataplane.EventState:
			k = ha.ConnUpdate
		case dataplane.EventRefresh:
			k = ha.ConnRefresh
		case dataplane.EventClose:
			k = ha.ConnClose
		default:
			continue
		}
		out = append(out, ha.ConnEvent{Kind: k, Entry: entryFromConn(ev.Conn)})
	}
	return out
}
