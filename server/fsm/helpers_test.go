package fsm

import (
	"bytes"
	"io"
	"net/netip"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// node wraps an FSM with the log index raft would give each entry.
type node struct {
	*FSM
	index uint64
}

func newNode(t *testing.T, opts ...Option) *node {
	t.Helper()
	return &node{FSM: New(nil, opts...)}
}

func (n *node) applyBytes(t *testing.T, data []byte) *raftlbv1.Result {
	t.Helper()
	n.index++
	res, ok := n.Apply(&raft.Log{Index: n.index, Term: 1, Type: raft.LogCommand, Data: data}).(*raftlbv1.Result)
	if !ok || res == nil {
		t.Fatalf("Apply returned %T, want *raftlbv1.Result", res)
	}
	return res
}

func (n *node) apply(t *testing.T, c *raftlbv1.Command) *raftlbv1.Result {
	t.Helper()
	data, err := proto.Marshal(c)
	if err != nil {
		t.Fatalf("marshal command: %v", err)
	}
	return n.applyBytes(t, data)
}

// mustApply applies c and fails the test unless it succeeds.
func (n *node) mustApply(t *testing.T, c *raftlbv1.Command) *raftlbv1.Result {
	t.Helper()
	res := n.apply(t, c)
	if err := ResultError(res); err != nil {
		t.Fatalf("apply %v: %v", c, err)
	}
	return res
}

// snapshotBytes persists a snapshot into memory.
func snapshotBytes(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	snap.Release()
	return sink.Bytes()
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func restore(t *testing.T, f *FSM, data []byte) {
	t.Helper()
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
}

func codeOf(r *raftlbv1.Result) codes.Code { return codes.Code(r.GetCode()) }

// --- command builders ---

func key(vip string, port uint32) *raftlbv1.ServiceKey {
	return &raftlbv1.ServiceKey{Vip: vip, Port: port, Protocol: raftlbv1.Protocol_PROTOCOL_TCP}
}

func createSvc(vip string, port uint32, owner string) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_CreateService{CreateService: &raftlbv1.CreateServiceRequest{
		Service: &raftlbv1.VirtualService{Key: key(vip, port)}, PreferredOwner: owner,
	}}}
}

func deleteSvc(vip string, port uint32) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_DeleteService{DeleteService: &raftlbv1.DeleteServiceRequest{Key: key(vip, port)}}}
}

func addRS(vip string, port uint32, addr string, rport uint32, m raftlbv1.ForwardingMethod) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_AddRealserver{AddRealserver: &raftlbv1.AddRealserverRequest{
		Service:    key(vip, port),
		Realserver: &raftlbv1.Realserver{Address: addr, Port: rport, Weight: 1, Method: m},
	}}}
}

func upsertDirector(id, front string, witness bool) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_UpsertDirector{UpsertDirector: &raftlbv1.UpsertDirector{Director: &raftlbv1.Director{
		Id: id, ApiAddress: front + ":9443", RaftAddress: "203.0.113.1:9444", FrontAddress: front, Witness: witness,
	}}}}
}

func removeDirector(id string) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_RemoveDirector{RemoveDirector: &raftlbv1.RemoveDirectorRequest{Id: id}}}
}

func setGateway(addr, owner string) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_SetAddress{SetAddress: &raftlbv1.SetAddressRequest{Address: &raftlbv1.Address{
		Address: addr, Kind: raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY, PreferredOwner: owner,
	}}}}
}

func assign(addr, owner string, epoch uint64) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_AssignAddresses{AssignAddresses: &raftlbv1.AssignAddresses{
		Addresses: []*raftlbv1.Address{{Address: addr, Owner: owner, Epoch: epoch}},
	}}}
}

func register(id string, addrs ...string) *raftlbv1.Command {
	return &raftlbv1.Command{UnixNano: 5e9, Op: &raftlbv1.Command_RegisterAgent{RegisterAgent: &raftlbv1.RegisterRequest{
		Id: id, Interfaces: []*raftlbv1.Interface{{Name: "eth0", Mac: "02:00:00:00:00:01", Addresses: addrs}},
	}}}
}

func conn(vip string, vport uint32, client string, cport uint32, rs string) *raftlbv1.ConnEntry {
	return &raftlbv1.ConnEntry{
		Protocol: raftlbv1.Protocol_PROTOCOL_TCP,
		ClientIp: IPv4ToUint32(netip.MustParseAddr(client)), ClientPort: cport,
		Vip: IPv4ToUint32(netip.MustParseAddr(vip)), Vport: vport,
		RealserverIp: IPv4ToUint32(netip.MustParseAddr(rs)), RealserverPort: vport,
		State: raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED, LastSeenUnixMs: 1000,
	}
}

func connBatch(upserts, deletes []*raftlbv1.ConnEntry) *raftlbv1.Command {
	return &raftlbv1.Command{Op: &raftlbv1.Command_ConnectionBatch{ConnectionBatch: &raftlbv1.ConnectionBatch{Upserts: upserts, Deletes: deletes}}}
}

// connBatchFrom is a connection batch proposed by director origin.
func connBatchFrom(origin string, upserts, deletes []*raftlbv1.ConnEntry) *raftlbv1.Command {
	c := connBatch(upserts, deletes)
	c.Origin = origin
	return c
}

func nopCloser(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

func mustMarshal(t *testing.T, c *raftlbv1.Command) []byte {
	t.Helper()
	b, err := proto.Marshal(c)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}
