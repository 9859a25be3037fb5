package fsm

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// A snapshot is a stream of length-delimited raftlbv1.Snapshot messages: the
// first holds everything but the connection table, each later one a chunk of
// connections. Chunks keep a million-entry table from becoming one huge
// message on either side.
const snapshotChunk = 8192

var (
	marshalOpts   = protodelim.MarshalOptions{MarshalOptions: proto.MarshalOptions{Deterministic: true}}
	unmarshalOpts = protodelim.UnmarshalOptions{MaxSize: -1}
)

// snapshot is a point-in-time copy that Persist writes out while Apply goes on.
type snapshot struct {
	base  *raftlbv1.Snapshot
	conns map[connKey]connVal
}

// Snapshot copies the state (under the lock, as raft requires of it);
// encoding happens in Persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &snapshot{base: f.s.toProto(false), conns: maps.Clone(f.s.conns)}, nil
}

// Persist writes the snapshot; it is deterministic, so replicas with the same
// state write the same bytes.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		return errors.Join(fmt.Errorf("persist snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("close snapshot: %w", err)
	}
	return nil
}

func (s *snapshot) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	if _, err := marshalOpts.MarshalTo(bw, s.base); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	conns := sortedConns(s.conns)
	for len(conns) > 0 {
		n := min(len(conns), snapshotChunk)
		if _, err := marshalOpts.MarshalTo(bw, &raftlbv1.Snapshot{Connections: conns[:n]}); err != nil {
			return fmt.Errorf("write connections: %w", err)
		}
		conns = conns[n:]
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// Release is a no-op: the snapshot holds copies only.
func (s *snapshot) Release() {}

// Restore replaces the whole state with the snapshot's, discarding all of
// the previous state. On error the previous state stays.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	next, err := readSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.s = next
	f.mu.Unlock()
	f.emit(ConnChange{Reset: true})
	f.notify()
	f.log.Info("restored snapshot", "generation", next.generation, "services", len(next.services), "connections", len(next.conns))
	return nil
}

func readSnapshot(r io.Reader) (*state, error) {
	br := bufio.NewReader(r)
	base := &raftlbv1.Snapshot{}
	if err := unmarshalOpts.UnmarshalFrom(br, base); err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	for {
		chunk := &raftlbv1.Snapshot{}
		err := unmarshalOpts.UnmarshalFrom(br, chunk)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read connections: %w", err)
		}
		base.Connections = append(base.Connections, chunk.GetConnections()...)
	}
	return stateFromProto(base)
}

// toProto returns the state as a Snapshot message, connections included only
// if withConns.
func (s *state) toProto(withConns bool) *raftlbv1.Snapshot {
	out := &raftlbv1.Snapshot{Generation: s.generation, ConnectionsDropped: s.dropped}
	for _, k := range sortedKeys(s.services, compareSvcKey) {
		out.Services = append(out.Services, s.services[k].view())
	}
	for _, a := range sortedKeys(s.addresses, netip.Addr.Compare) {
		out.Addresses = append(out.Addresses, proto.CloneOf(s.addresses[a]))
	}
	for _, id := range sortedKeys(s.directors, cmp.Compare[string]) {
		out.Directors = append(out.Directors, proto.CloneOf(s.directors[id]))
	}
	for _, id := range sortedKeys(s.agents, cmp.Compare[string]) {
		out.Agents = append(out.Agents, proto.CloneOf(s.agents[id]))
	}
	if withConns {
		out.Connections = sortedConns(s.conns)
	}
	return out
}

// stateFromProto rebuilds a state, refusing a snapshot that could not have
// been written by toProto: bad or duplicate keys, or addresses breaking what
// Apply keeps (a known kind, at most one NAT gateway, an owner that is a full
// director).
func stateFromProto(p *raftlbv1.Snapshot) (*state, error) {
	s := newState()
	s.generation, s.dropped = p.GetGeneration(), p.GetConnectionsDropped()
	for i, v := range p.GetServices() {
		k, ok := keyOf(v.GetKey())
		if !ok {
			return nil, fmt.Errorf("services[%d]: %w", i, invalid("key", "malformed service key"))
		}
		if _, dup := s.services[k]; dup {
			return nil, fmt.Errorf("services[%d]: %w", i, alreadyExists("key", "service %s twice", k))
		}
		if err := validateService(fmt.Sprintf("services[%d]", i), v); err != nil {
			return nil, err
		}
		sv := &service{def: proto.CloneOf(v), rs: make(map[rsKey]*raftlbv1.Realserver)}
		sv.def.Realservers = nil
		for j, r := range v.GetRealservers() {
			a, reason := parseUnicast(r.GetAddress())
			if reason != "" || r.GetPort() == 0 || r.GetPort() > 65535 {
				return nil, fmt.Errorf("services[%d].realservers[%d]: %w", i, j, invalid("address", "malformed realserver"))
			}
			rk := rsKey{addr: a, port: uint16(r.GetPort())}
			if _, dup := sv.rs[rk]; dup {
				return nil, fmt.Errorf("services[%d].realservers[%d]: %w", i, j, alreadyExists("address", "realserver twice"))
			}
			sv.rs[rk] = proto.CloneOf(r)
		}
		s.services[k] = sv
	}
	// Directors before addresses: an address's owner must be one of them.
	for i, d := range p.GetDirectors() {
		if err := validateDirector(fmt.Sprintf("directors[%d]", i), d); err != nil {
			return nil, err
		}
		if _, dup := s.directors[d.GetId()]; dup {
			return nil, fmt.Errorf("directors[%d]: %w", i, alreadyExists("id", "%q twice", d.GetId()))
		}
		s.directors[d.GetId()] = proto.CloneOf(d)
	}
	var gateway netip.Addr
	for i, a := range p.GetAddresses() {
		addr, reason := parseUnicast(a.GetAddress())
		if reason != "" {
			return nil, fmt.Errorf("addresses[%d]: %w", i, invalid("address", "%s", reason))
		}
		if _, dup := s.addresses[addr]; dup {
			return nil, fmt.Errorf("addresses[%d]: %w", i, alreadyExists("address", "%s twice", addr))
		}
		switch a.GetKind() {
		case raftlbv1.AddressKind_ADDRESS_KIND_VIP:
		case raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY:
			// Apply keeps one gateway; with two, gateway() would pick one at random.
			if gateway.IsValid() {
				return nil, fmt.Errorf("addresses[%d]: %w", i, invalid("kind", "%s is a second NAT gateway besides %s", addr, gateway))
			}
			gateway = addr
		default:
			return nil, fmt.Errorf("addresses[%d]: %w", i, invalid("kind", "%s is not VIP or NAT_GATEWAY", a.GetKind()))
		}
		if o := a.GetOwner(); o != "" && !s.fullDirector(o) {
			return nil, fmt.Errorf("addresses[%d]: %w", i, invalid("owner", "%q is not a director that may own addresses", o))
		}
		if err := validateID("preferred_owner", a.GetPreferredOwner(), false); err != nil {
			return nil, fmt.Errorf("addresses[%d]: %w", i, err)
		}
		s.addresses[addr] = proto.CloneOf(a)
	}
	for i, a := range p.GetAgents() {
		if err := validateRegister(&raftlbv1.RegisterRequest{Id: a.GetId(), Interfaces: a.GetInterfaces()}); err != nil {
			return nil, fmt.Errorf("agents[%d]: %w", i, err)
		}
		if _, dup := s.agents[a.GetId()]; dup {
			return nil, fmt.Errorf("agents[%d]: %w", i, alreadyExists("id", "%q twice", a.GetId()))
		}
		s.agents[a.GetId()] = proto.CloneOf(a)
	}
	for i, e := range p.GetConnections() {
		if err := validateConnEntry(fmt.Sprintf("connections[%d]", i), e, false); err != nil {
			return nil, err
		}
		s.conns[connKeyOf(e)] = connValOf(e)
	}
	return s, nil
}
