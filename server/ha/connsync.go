package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
)

// ConnEventKind says what happened to a connection on the owner.
type ConnEventKind uint8

// Connection event kinds.
const (
	ConnNew ConnEventKind = iota + 1
	ConnUpdate
	// ConnRefresh re-announces a live connection so that replicas, which
	// expire entries on their own, never expire one alive on the owner.
	ConnRefresh
	// ConnClose is an entry that closed or expired on the owner; it is
	// deleted everywhere.
	ConnClose
)

// ConnEvent is one connection-table change to replicate.
type ConnEvent struct {
	Kind  ConnEventKind
	Entry *raftlbv1.ConnEntry
	// At is when the event happened; zero means when it was enqueued.
	At time.Time
}

// BatcherConfig tunes connection-table replication.
type BatcherConfig struct {
	// MaxDelay bounds how long an event waits for its batch; default 20ms.
	MaxDelay time.Duration
	// MaxEntries bounds a batch's entries; default 4096.
	MaxEntries int
	// MaxBytes bounds a batch's encoded size, well under what a Raft entry
	// comfortably carries; default 512 KiB.
	MaxBytes int
	// QueueLen bounds the events waiting to be batched; beyond it events are
	// dropped, counted, and a resync is scheduled. Default 262144.
	QueueLen int
	// Owns reports whether this director answers for a VIP now (it holds a
	// valid lease: Keeper.Owns). Events for other VIPs are never replicated,
	// so a standby's local expiry or a deposed owner's late events cannot
	// delete or overwrite what the real owner replicates. Nil means all.
	Owns func(vip netip.Addr) bool
	// Live returns the live entries of the local connection table, for a
	// resync; nil disables resyncs.
	Live func(ctx context.Context) ([]*raftlbv1.ConnEntry, error)
	// ResyncInterval re-announces every live owned entry periodically; zero
	// means only after drops.
	ResyncInterval time.Duration
	// ResyncDelay is the wait between drops and the resync they cause, so a
	// burst of drops causes one resync; default 1s.
	ResyncDelay time.Duration
	// Retry is the wait before proposing a batch again; default 50ms.
	Retry time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *BatcherConfig) defaults() {
	if c.MaxDelay <= 0 {
		c.MaxDelay = 20 * time.Millisecond
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 4096
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 512 << 10
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 1 << 18
	}
	if c.ResyncDelay <= 0 {
		c.ResyncDelay = time.Second
	}
	if c.Retry <= 0 {
		c.Retry = 50 * time.Millisecond
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Batcher replicates the owner's connection events through Raft, off the
// packet path: Enqueue never blocks, Run (one goroutine, the batch's only
// owner) coalesces events per 5-tuple into ConnectionBatch commands bounded by
// time, entries and bytes, and proposes them one at a time.
type Batcher struct {
	cfg BatcherConfig
	p   Proposer
	log *slog.Logger
	m   *Metrics

	mu      sync.Mutex
	queue   []ConnEvent
	dropped bool
	resync  bool

	wake   chan struct{}
	flushC chan chan error

	b batch // Run's only
}

// NewBatcher returns a batcher proposing through p.
func NewBatcher(cfg BatcherConfig, p Proposer, log *slog.Logger, m *Metrics) *Batcher {
	cfg.defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Batcher{cfg: cfg, p: p, log: log.With("component", "connsync"), m: m,
		wake: make(chan struct{}, 1), flushC: make(chan chan error)}
}

// Enqueue hands events over for replication without blocking; what does not
// fit in the queue is dropped and counted, and a resync is scheduled.
func (b *Batcher) Enqueue(evs []ConnEvent) {
	now := time.Time{}
	b.mu.Lock()
	n := min(len(evs), b.cfg.QueueLen-len(b.queue))
	for _, e := range evs[:max(n, 0)] {
		if e.At.IsZero() {
			if now.IsZero() {
				now = b.cfg.Now()
			}
			e.At = now
		}
		b.queue = append(b.queue, e)
	}
	drop := len(evs) - max(n, 0)
	if drop > 0 {
		b.dropped = true
	}
	depth := len(b.queue)
	b.mu.Unlock()
	b.m.inc(func(m *Metrics) prometheus.Counter { return m.ConnEvents }, max(n, 0))
	b.m.inc(func(m *Metrics) prometheus.Counter { return m.ConnDropped }, drop)
	if b.m != nil {
		b.m.ConnQueueDepth.Set(float64(depth))
	}
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Resync schedules a re-announcement of every live owned entry.
func (b *Batcher) Resync() {
	b.mu.Lock()
	b.resync = true
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Flush proposes every event enqueued before it was called and returns once
// they are committed: a handover calls it before releasing an address.
func (b *Batcher) Flush(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case b.flushC <- done:
	case <-ctx.Done():
		return fmt.Errorf("flush connection sync: %w", ctx.Err())
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("flush connection sync: %w", ctx.Err())
	}
}

// Run batches and proposes until ctx ends.
func (b *Batcher) Run(ctx context.Context) error {
	b.b.reset()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var periodic <-chan time.Time
	if b.cfg.ResyncInterval > 0 && b.cfg.Live != nil {
		t := time.NewTicker(b.cfg.ResyncInterval)
		defer t.Stop()
		periodic = t.C
	}
	var resyncAt <-chan time.Time
	for {
		if b.b.len() > 0 {
			timer.Reset(max(time.Until(b.b.oldest.Add(b.cfg.MaxDelay)), 0))
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-b.wake:
			if err := b.drain(ctx); err != nil {
				return nil
			}
			b.mu.Lock()
			dropped, want := b.dropped, b.resync
			b.dropped, b.resync = false, false
			b.mu.Unlock()
			if want {
				b.resyncNow(ctx)
			} else if dropped && resyncAt == nil && b.cfg.Live != nil {
				resyncAt = time.After(b.cfg.ResyncDelay)
			}
		case <-resyncAt:
			resyncAt = nil
			b.resyncNow(ctx)
		case <-periodic:
			b.resyncNow(ctx)
		case <-timer.C:
			if err := b.proposeBatch(ctx); err != nil {
				return nil
			}
		case done := <-b.flushC:
			err := b.drain(ctx)
			if err == nil {
				err = b.proposeBatch(ctx)
			}
			done <- err
		}
	}
}

// drain moves the queue into batches, proposing each batch that fills up.
func (b *Batcher) drain(ctx context.Context) error {
	b.mu.Lock()
	q := b.queue
	b.queue = nil
	b.mu.Unlock()
	if b.m != nil {
		b.m.ConnQueueDepth.Set(0)
	}
	for _, e := range q {
		if err := b.add(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

func (b *Batcher) add(ctx context.Context, e ConnEvent) error {
	if e.Entry == nil || (b.cfg.Owns != nil && !b.cfg.Owns(fsm.Uint32ToIPv4(e.Entry.GetVip()))) {
		return nil
	}
	b.b.add(e)
	if b.b.len() >= b.cfg.MaxEntries || b.b.bytes >= b.cfg.MaxBytes {
		return b.proposeBatch(ctx)
	}
	return nil
}

func (b *Batcher) resyncNow(ctx context.Context) {
	if b.cfg.Live == nil {
		return
	}
	live, err := b.cfg.Live(ctx)
	if err != nil {
		b.log.Warn("read connection table for resync", "err", err)
		return
	}
	now := b.cfg.Now()
	for _, e := range live {
		if err := b.add(ctx, ConnEvent{Kind: ConnRefresh, Entry: e, At: now}); err != nil {
			return
		}
	}
	b.m.inc(func(m *Metrics) prometheus.Counter { return m.ConnResyncs }, 1)
	if err := b.proposeBatch(ctx); err != nil {
		return
	}
	b.log.Info("resynced connection table", "entries", len(live))
}

// proposeBatch proposes the current batch, retrying until it is committed,
// refused by the state machine (logged and dropped) or ctx ends.
func (b *Batcher) proposeBatch(ctx context.Context) error {
	if b.b.len() == 0 {
		return nil
	}
	cmd := b.b.command(b.cfg.Owns)
	n, oldest := b.b.len(), b.b.oldest
	b.b.reset()
	if cmd == nil {
		return nil
	}
	for {
		res, err := b.p.Propose(ctx, cmd)
		if err == nil && res.GetCode() != 0 {
			err = fsm.ResultError(res)
		}
		var refused *fsm.Error
		switch {
		case err == nil:
			b.m.inc(func(m *Metrics) prometheus.Counter { return m.ConnBatches }, 1)
			if b.m != nil {
				b.m.ConnBatchEntries.Observe(float64(n))
			}
			b.m.observe(func(m *Metrics) prometheus.Histogram { return m.ConnLagSeconds }, b.cfg.Now().Sub(oldest))
			return nil
		case errors.As(err, &refused):
			b.log.Error("connection batch refused", "entries", n, "err", err)
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("propose connection batch: %w", ctx.Err())
		}
		b.log.Debug("propose connection batch", "entries", n, "err", err)
		t := time.NewTimer(b.cfg.Retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("propose connection batch: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// connKey is a connection's 5-tuple.
type connKey struct {
	proto      raftlbv1.Protocol
	cip, vip   uint32
	cport, vpt uint32
}

func keyOf(e *raftlbv1.ConnEntry) connKey {
	return connKey{proto: e.GetProtocol(), cip: e.GetClientIp(), vip: e.GetVip(), cport: e.GetClientPort(), vpt: e.GetVport()}
}

// batch coalesces events per 5-tuple: the last event wins.
type batch struct {
	idx     map[connKey]int
	entries []ConnEvent
	sizes   []int
	bytes   int
	oldest  time.Time
}

func (b *batch) reset() {
	b.idx = make(map[connKey]int)
	b.entries, b.sizes, b.bytes, b.oldest = nil, nil, 0, time.Time{}
}

func (b *batch) len() int { return len(b.entries) }

func (b *batch) add(e ConnEvent) {
	if e.Kind == ConnClose {
		e.Entry = &raftlbv1.ConnEntry{Protocol: e.Entry.GetProtocol(), ClientIp: e.Entry.GetClientIp(),
			ClientPort: e.Entry.GetClientPort(), Vip: e.Entry.GetVip(), Vport: e.Entry.GetVport()}
	}
	size := proto.Size(e.Entry) + 3 // field tag and length prefix
	if b.oldest.IsZero() || e.At.Before(b.oldest) {
		b.oldest = e.At
	}
	k := keyOf(e.Entry)
	if i, ok := b.idx[k]; ok {
		b.bytes += size - b.sizes[i]
		b.entries[i], b.sizes[i] = e, size
		return
	}
	b.idx[k] = len(b.entries)
	b.entries = append(b.entries, e)
	b.sizes = append(b.sizes, size)
	b.bytes += size
}

// command builds the ConnectionBatch, leaving out VIPs no longer owned; nil
// if nothing is left.
func (b *batch) command(owns func(netip.Addr) bool) *raftlbv1.Command {
	cb := &raftlbv1.ConnectionBatch{}
	for _, e := range b.entries {
		if owns != nil && !owns(fsm.Uint32ToIPv4(e.Entry.GetVip())) {
			continue
		}
		if e.Kind == ConnClose {
			cb.Deletes = append(cb.Deletes, e.Entry)
		} else {
			cb.Upserts = append(cb.Upserts, e.Entry)
		}
	}
	if len(cb.Upserts) == 0 && len(cb.Deletes) == 0 {
		return nil
	}
	return &raftlbv1.Command{Op: &raftlbv1.Command_ConnectionBatch{ConnectionBatch: cb}}
}
