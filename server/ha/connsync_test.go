package ha

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
)

// batchLog is a Proposer that records connection batches.
type batchLog struct {
	mu      sync.Mutex
	batches []*raftlbv1.ConnectionBatch
	fails   int // fail this many proposals first
	block   chan struct{}
}

func (p *batchLog) Propose(ctx context.Context, cmd *raftlbv1.Command) (*raftlbv1.Result, error) {
	if p.block != nil {
		select {
		case <-p.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fails > 0 {
		p.fails--
		return nil, errors.New("leadership lost")
	}
	p.batches = append(p.batches, cmd.GetConnectionBatch())
	return &raftlbv1.Result{}, nil
}

func (p *batchLog) all() []*raftlbv1.ConnectionBatch {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*raftlbv1.ConnectionBatch(nil), p.batches...)
}

func (p *batchLog) entries() int {
	n := 0
	for _, b := range p.all() {
		n += len(b.GetUpserts()) + len(b.GetDeletes())
	}
	return n
}

func conn(vip string, cport uint32, state raftlbv1.ConnectionState) *raftlbv1.ConnEntry {
	return &raftlbv1.ConnEntry{Protocol: raftlbv1.Protocol_PROTOCOL_TCP, ClientIp: fsm.IPv4ToUint32(netip.MustParseAddr("192.0.2.100")),
		ClientPort: cport, Vip: fsm.IPv4ToUint32(netip.MustParseAddr(vip)), Vport: 80,
		RealserverIp: fsm.IPv4ToUint32(netip.MustParseAddr("192.0.2.11")), RealserverPort: 80, State: state}
}

func runBatcher(t testing.TB, cfg BatcherConfig, p Proposer) *Batcher {
	t.Helper()
	b := NewBatcher(cfg, p, nil, NewMetrics(nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

func TestBatcherCoalesces(t *testing.T) {
	const syn, est = raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV, raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED
	owned := netip.MustParseAddr("198.51.100.10")
	tests := []struct {
		name string
		evs  []ConnEvent
		want []*raftlbv1.ConnectionBatch
	}{
		{
			name: "new then update: one upsert with the last state",
			evs:  []ConnEvent{{Kind: ConnNew, Entry: conn("198.51.100.10", 1000, syn)}, {Kind: ConnUpdate, Entry: conn("198.51.100.10", 1000, est)}},
			want: []*raftlbv1.ConnectionBatch{{Upserts: []*raftlbv1.ConnEntry{conn("198.51.100.10", 1000, est)}}},
		},
		{
			name: "new then close: one delete, key only",
			evs:  []ConnEvent{{Kind: ConnNew, Entry: conn("198.51.100.10", 1000, syn)}, {Kind: ConnClose, Entry: conn("198.51.100.10", 1000, est)}},
			want: []*raftlbv1.ConnectionBatch{{Deletes: []*raftlbv1.ConnEntry{{Protocol: raftlbv1.Protocol_PROTOCOL_TCP,
				ClientIp: 0xC0000264, ClientPort: 1000, Vip: 0xC633640A, Vport: 80}}}},
		},
		{
			name: "not owned: never replicated",
			evs:  []ConnEvent{{Kind: ConnClose, Entry: conn("198.51.100.11", 1000, est)}, {Kind: ConnRefresh, Entry: conn("198.51.100.10", 1001, est)}},
			want: []*raftlbv1.ConnectionBatch{{Upserts: []*raftlbv1.ConnEntry{conn("198.51.100.10", 1001, est)}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &batchLog{}
			b := runBatcher(t, BatcherConfig{MaxDelay: time.Hour, Owns: func(a netip.Addr) bool { return a == owned }}, p)
			b.Enqueue(tt.evs)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := b.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, p.all(), protocmp.Transform()); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBatcherBounds(t *testing.T) {
	p := &batchLog{}
	b := runBatcher(t, BatcherConfig{MaxDelay: 10 * time.Millisecond, MaxEntries: 100}, p)
	var evs []ConnEvent
	for i := range 250 {
		evs = append(evs, ConnEvent{Kind: ConnNew, Entry: conn("198.51.100.10", uint32(1000+i), raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV)})
	}
	b.Enqueue(evs)
	// Two full batches at once, the rest after MaxDelay, without a Flush.
	eventually(t, 5*time.Second, "all entries proposed", func() bool { return p.entries() == 250 })
	var sizes []int
	for _, x := range p.all() {
		sizes = append(sizes, len(x.GetUpserts()))
	}
	if diff := cmp.Diff([]int{100, 100, 50}, sizes); diff != "" {
		t.Errorf("batch sizes (-want +got):\n%s", diff)
	}
}

func TestBatcherByteBound(t *testing.T) {
	p := &batchLog{}
	b := runBatcher(t, BatcherConfig{MaxDelay: time.Hour, MaxBytes: 1000}, p)
	var evs []ConnEvent
	for i := range 100 {
		evs = append(evs, ConnEvent{Kind: ConnNew, Entry: conn("198.51.100.10", uint32(1000+i), raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV)})
	}
	b.Enqueue(evs)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, x := range p.all() {
		cmd := &raftlbv1.Command{Op: &raftlbv1.Command_ConnectionBatch{ConnectionBatch: x}}
		if n := protoSize(cmd); n > 1100 {
			t.Errorf("batch %d is %d bytes, bound 1000", i, n)
		}
	}
	if p.entries() != 100 {
		t.Errorf("proposed %d entries, want 100", p.entries())
	}
}

// TestBatcherDropsAndResyncs: a full queue drops and counts, and a resync
// re-announces the live table; a failed proposal is retried.
func TestBatcherDropsAndResyncs(t *testing.T) {
	block := make(chan struct{})
	p := &batchLog{block: block, fails: 1}
	live := []*raftlbv1.ConnEntry{conn("198.51.100.10", 1, raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED)}
	m := NewMetrics(nil)
	b := NewBatcher(BatcherConfig{MaxDelay: time.Millisecond, MaxEntries: 1, QueueLen: 4, ResyncDelay: time.Millisecond, Retry: time.Millisecond,
		Live: func(context.Context) ([]*raftlbv1.ConnEntry, error) { return live, nil }}, p, nil, m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	b.Enqueue([]ConnEvent{{Kind: ConnNew, Entry: conn("198.51.100.10", 1, raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV)}})
	// The first proposal is blocked: fill the queue past its bound.
	eventually(t, 5*time.Second, "queue drained into the blocked proposal", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.queue) == 0
	})
	var evs []ConnEvent
	for i := range 10 {
		evs = append(evs, ConnEvent{Kind: ConnNew, Entry: conn("198.51.100.10", uint32(100+i), raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV)})
	}
	b.Enqueue(evs)
	if got := testCounter(m.ConnDropped); got != 6 {
		t.Fatalf("dropped %v, want 6", got)
	}
	close(block)
	eventually(t, 5*time.Second, "resync", func() bool { return testCounter(m.ConnResyncs) == 1 })
	eventually(t, 5*time.Second, "resync committed", func() bool {
		bs := p.all()
		return len(bs) > 0 && cmp.Equal(bs[len(bs)-1].GetUpserts(), live, protocmp.Transform())
	})
	if got := p.entries(); got != 1+4+1 {
		t.Errorf("committed %d entries, want 6 (first, 4 queued, 1 resync)", got)
	}
}

func BenchmarkBatcher(b *testing.B) {
	p := &batchLog{}
	bt := runBatcher(b, BatcherConfig{}, p)
	evs := make([]ConnEvent, 1024)
	now := time.Now()
	for i := range evs {
		evs[i] = ConnEvent{Kind: ConnNew, At: now, Entry: conn("198.51.100.10", uint32(i), raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED)}
	}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		bt.Enqueue(evs)
		if err := bt.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(evs))/b.Elapsed().Seconds(), "events/s")
}
