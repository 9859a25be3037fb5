package fsm

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// FSM is raftlb's replicated state machine; it implements raft.FSM and
// raft.BatchingFSM.
//
// Concurrency: raft calls Apply, ApplyBatch, Snapshot and Restore from one
// goroutine, never two of them at once; FSMSnapshot.Persist runs in another
// goroutine concurrently with Apply and works on a copy taken by Snapshot.
// Every read method may be called from any goroutine at any time, including
// during Apply and Restore: the state sits behind a lock, and reads return
// deep copies that the caller owns. Restore builds the new state aside and
// swaps it in under the lock, so a read sees the old state or the new one,
// never a mix.
type FSM struct {
	log       *slog.Logger
	maxConns  int
	connHooks []func(ConnChange)

	mu      sync.RWMutex
	s       *state
	changed chan struct{}
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// Option configures an FSM.
type Option func(*FSM)

// WithMaxConnections bounds the connection table (default
// DefaultMaxConnections). Every director must use the same bound, or their
// tables diverge once it is reached.
func WithMaxConnections(n int) Option {
	return func(f *FSM) {
		if n > 0 {
			f.maxConns = n
		}
	}
}

// WithConnectionHook adds a function told of every change of the connection
// table (and of every flush), in log order, from the goroutine that applies
// the log, after the change is visible to reads and with no lock held, but
// before the watchers of Changed wake: one that wakes to a new assignment
// knows the connections committed with it have been handed to the hooks.
// Hooks run in the order they were added. A hook must not block for long:
// Apply waits for it.
func WithConnectionHook(fn func(ConnChange)) Option {
	return func(f *FSM) {
		if fn != nil {
			f.connHooks = append(f.connHooks, fn)
		}
	}
}

// New returns an empty FSM.
func New(log *slog.Logger, opts ...Option) *FSM {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &FSM{
		log:      log.With("component", "fsm"),
		maxConns: DefaultMaxConnections,
		s:        newState(),
		changed:  make(chan struct{}),
	}
	for _, o := range opts {
		o(f)
	}
	return f
}

// Apply applies one committed log entry and returns its *raftlbv1.Result,
// never nil. A command that fails validation or a state check changes
// nothing; one that cannot be decoded or has no known operation returns an
// Internal result and is logged as an error.
func (f *FSM) Apply(l *raft.Log) any {
	var ch ConnChange
	f.mu.Lock()
	res, notify := f.applyLocked(l, &ch)
	f.mu.Unlock()
	f.emit(ch)
	if notify {
		f.notify()
	}
	return res
}

// ApplyBatch applies entries in order under one lock; configuration entries
// get a nil response, as raft expects.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	// One change per entry: merging them would lose the order of an upsert
	// and a later delete of the same connection.
	changes := make([]ConnChange, len(logs))
	notify := false
	f.mu.Lock()
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		res, n := f.applyLocked(l, &changes[i])
		out[i] = res
		notify = notify || n
	}
	f.mu.Unlock()
	for _, ch := range changes {
		f.emit(ch)
	}
	if notify {
		f.notify()
	}
	return out
}

func (f *FSM) emit(ch ConnChange) {
	if ch.empty() {
		return
	}
	for _, hook := range f.connHooks {
		hook(ch)
	}
}

// notify wakes the watchers of Changed.
func (f *FSM) notify() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notifyLocked()
}

// notifyLocked wakes the watchers of Changed.
func (f *FSM) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// applyLocked applies one entry and reports whether the generation moved.
func (f *FSM) applyLocked(l *raft.Log, ch *ConnChange) (*raftlbv1.Result, bool) {
	cmd := &raftlbv1.Command{}
	if err := proto.Unmarshal(l.Data, cmd); err != nil {
		f.log.Error("rejecting undecodable command", "index", l.Index, "err", err)
		return f.result(fmt.Errorf("decode command at index %d: %w", l.Index, err)), false
	}
	if err := validateCommand(cmd); err != nil {
		if err.Code == codes.Internal {
			f.log.Error("rejecting command", "index", l.Index, "err", err)
		} else {
			f.log.Debug("rejecting command", "index", l.Index, "err", err)
		}
		return f.result(err), false
	}
	ch.UnixNano = cmd.GetUnixNano()
	t := &txn{s: f.s, cmd: cmd, maxConns: f.maxConns, conns: ch}
	res, err := t.apply()
	if err != nil {
		f.log.Debug("rejecting command", "index", l.Index, "err", err)
		return f.result(err), false
	}
	if t.config {
		f.s.generation++
	}
	res.Generation = f.s.generation
	return res, t.config
}

func (f *FSM) result(err error) *raftlbv1.Result {
	r := ToResult(err)
	r.Generation = f.s.generation
	return r
}

// --- reads ---

// Changed returns a channel closed at the next change of Generation (or
// Restore). Take it before reading, then wait on it and call again.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// Generation counts changes to the desired configuration. It does not move
// for agent status reports or the connection table.
func (f *FSM) Generation() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.generation
}

// Services returns every virtual service with its realservers, sorted by
// VIP, port and protocol (realservers by address and port).
func (f *FSM) Services() []*raftlbv1.VirtualService {
	svcs, _ := f.ServicesAt()
	return svcs
}

// ServicesAt is Services and the generation it was read at, read together.
func (f *FSM) ServicesAt() ([]*raftlbv1.VirtualService, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*raftlbv1.VirtualService, 0, len(f.s.services))
	for _, k := range sortedKeys(f.s.services, compareSvcKey) {
		out = append(out, f.s.services[k].view())
	}
	return out, f.s.generation
}

// Service returns one service with its realservers: an InvalidArgument
// error for a malformed key, ErrNotFound if there is no such service.
func (f *FSM) Service(key *raftlbv1.ServiceKey) (*raftlbv1.VirtualService, error) {
	if err := validateKey("key", key); err != nil {
		return nil, err
	}
	k, _ := keyOf(key)
	f.mu.RLock()
	defer f.mu.RUnlock()
	sv, ok := f.s.services[k]
	if !ok {
		return nil, notFound("key", "service %s not found", k)
	}
	return sv.view(), nil
}

// Addresses returns the announced addresses, sorted.
func (f *FSM) Addresses() []*raftlbv1.Address {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*raftlbv1.Address, 0, len(f.s.addresses))
	for _, a := range sortedKeys(f.s.addresses, netip.Addr.Compare) {
		out = append(out, proto.CloneOf(f.s.addresses[a]))
	}
	return out
}

// Directors returns the known directors and witnesses, sorted by id.
func (f *FSM) Directors() []*raftlbv1.Director {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*raftlbv1.Director, 0, len(f.s.directors))
	for _, id := range sortedKeys(f.s.directors, cmp.Compare[string]) {
		out = append(out, proto.CloneOf(f.s.directors[id]))
	}
	return out
}

// Agents returns the registered agents, sorted by id. last_seen_unix_ms is
// set; last_seen_ms is left for the caller, who has a clock.
func (f *FSM) Agents() []*raftlbv1.AgentInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*raftlbv1.AgentInfo, 0, len(f.s.agents))
	for _, id := range sortedKeys(f.s.agents, cmp.Compare[string]) {
		out = append(out, proto.CloneOf(f.s.agents[id]))
	}
	return out
}

// Connections returns the replicated connection table in key order.
func (f *FSM) Connections() []*raftlbv1.ConnEntry {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedConns(f.s.conns)
}

// Counts are sizes of the state, read together.
type Counts struct {
	Generation  uint64
	Services    int
	Realservers int
	Connections int
	// ConnectionsDropped counts new entries refused because the table was full.
	ConnectionsDropped uint64
}

// Counts returns the sizes of the state.
func (f *FSM) Counts() Counts {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := Counts{
		Generation:         f.s.generation,
		Services:           len(f.s.services),
		Connections:        len(f.s.conns),
		ConnectionsDropped: f.s.dropped,
	}
	for _, sv := range f.s.services {
		c.Realservers += len(sv.rs)
	}
	return c
}
