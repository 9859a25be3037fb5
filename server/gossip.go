package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// ErrGossipKey is returned for a gossip key of the wrong size or encoding.
var ErrGossipKey = errors.New("gossip key must be 16, 24 or 32 bytes, raw or base64")

// ReadGossipKey reads a memberlist key: 16, 24 or 32 raw bytes, or their
// standard base64 encoding (surrounding whitespace ignored).
func ReadGossipKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read gossip key: %w", err)
	}
	if validKeyLen(len(b)) {
		return b, nil
	}
	if dec, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b))); err == nil && validKeyLen(len(dec)) {
		return dec, nil
	}
	return nil, fmt.Errorf("read gossip key %s: %w", path, ErrGossipKey)
}

// WriteGossipKey writes a fresh random 32-byte key, base64-encoded, to path.
func WriteGossipKey(path string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return fmt.Errorf("generate gossip key: %w", err)
	}
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write gossip key: %w", err)
	}
	return nil
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }

// gossip is this director's memberlist presence. memberlist owns its own
// goroutines; gossip only adds a record of members that left or died, which
// memberlist's Members omits but status wants to show.
type gossip struct {
	ml   *memberlist.Memberlist
	log  *slog.Logger
	self string

	// hint tells the HA reassigner of members joining (alive) and leaving
	// or dying; it only speeds reassignment up.
	hint func(id string, alive bool)

	mu   sync.Mutex
	gone map[string]string // id → "dead" or "left"
}

// member is one director as memberlist sees it.
type member struct {
	Director *raftlbv1.Director // from its metadata; nil if unreadable
	State    string             // alive, suspect, dead, left
}

func newGossip(cfg Config, key []byte, meta *raftlbv1.Director, logger *slog.Logger, hint func(id string, alive bool)) (*gossip, error) {
	host, portStr, err := net.SplitHostPort(cfg.GossipAddr)
	if err != nil {
		return nil, fmt.Errorf("parse gossip address: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("parse gossip port: %w", err)
	}
	g := &gossip{log: logger, self: cfg.ID, gone: map[string]string{}, hint: hint}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.ID
	mc.BindAddr = host
	mc.BindPort = port
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		mc.AdvertiseAddr = host
	}
	// Fast detection on a LAN (HA timing notes: ~300-500 ms with these).
	// memberlist only informs; Raft is the authority, so a false suspicion
	// costs nothing but a status line.
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 100 * time.Millisecond
	mc.SuspicionMult = 3
	mc.GossipInterval = 100 * time.Millisecond
	mc.PushPullInterval = 15 * time.Second
	mc.TCPTimeout = 2 * time.Second
	if key != nil {
		mc.SecretKey = key
	}
	mc.Delegate = &metaDelegate{meta: encodeMeta(meta)}
	mc.Events = g
	mc.Logger = log.New(&levelWriter{log: logger, lib: "memberlist", min: slog.LevelWarn}, "", 0)

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start memberlist: %w", err)
	}
	g.ml = ml
	return g, nil
}

// addr is the address other members reach this one at.
func (g *gossip) addr() string {
	n := g.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// members returns every member known now, this one included, by id.
func (g *gossip) members() map[string]member {
	out := map[string]member{}
	g.mu.Lock()
	for id, st := range g.gone {
		out[id] = member{State: st}
	}
	g.mu.Unlock()
	for _, n := range g.ml.Members() {
		st := "alive"
		if n.State == memberlist.StateSuspect {
			st = "suspect"
		}
		d := decodeMeta(n.Meta)
		if d != nil {
			d.GossipAddress = n.Address()
		}
		out[n.Name] = member{Director: d, State: st}
	}
	return out
}

// joinLoop keeps trying to reach the members it should know until ctx ends:
// candidates() is re-evaluated each round, so directors learned from the
// replicated state later (or restarted on new ports) are found too.
func (g *gossip) joinLoop(ctx context.Context, candidates func() []string) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		known := map[string]bool{}
		for _, n := range g.ml.Members() {
			known[net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))] = true
		}
		var todo []string
		self := g.addr()
		for _, c := range candidates() {
			if c != "" && c != self && !known[c] && !slices.Contains(todo, c) {
				todo = append(todo, c)
			}
		}
		if len(todo) > 0 {
			if n, err := g.ml.Join(todo); err != nil && n == 0 {
				g.log.Debug("join gossip peers", "addr", todo, "err", err)
			}
		}
		t.Reset(2 * time.Second)
	}
}

// leave announces departure and stops memberlist.
func (g *gossip) leave(timeout time.Duration) {
	if err := g.ml.Leave(timeout); err != nil {
		g.log.Debug("leave gossip", "err", err)
	}
	if err := g.ml.Shutdown(); err != nil {
		g.log.Warn("shut down memberlist", "err", err)
	}
}

// NotifyJoin, NotifyLeave and NotifyUpdate implement memberlist.EventDelegate.
func (g *gossip) NotifyJoin(n *memberlist.Node) {
	g.mu.Lock()
	delete(g.gone, n.Name)
	g.mu.Unlock()
	if n.Name != g.self {
		g.log.Info("gossip member joined", "id", n.Name, "addr", n.Address())
		if g.hint != nil {
			g.hint(n.Name, true)
		}
	}
}

func (g *gossip) NotifyLeave(n *memberlist.Node) {
	st := "dead"
	if n.State == memberlist.StateLeft {
		st = "left"
	}
	if n.Name == g.self {
		return
	}
	g.mu.Lock()
	g.gone[n.Name] = st
	g.mu.Unlock()
	g.log.Info("gossip member gone", "id", n.Name, "state", st)
	if g.hint != nil {
		g.hint(n.Name, false)
	}
}

func (g *gossip) NotifyUpdate(*memberlist.Node) {}

// metaDelegate advertises this director's addresses in memberlist metadata.
type metaDelegate struct{ meta []byte }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}
func (d *metaDelegate) NotifyMsg([]byte)                    {}
func (d *metaDelegate) GetBroadcasts(int, int) [][]byte     { return nil }
func (d *metaDelegate) LocalState(bool) []byte              { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, _ bool) {}

// encodeMeta packs a Director into NodeMeta; protobuf keeps it far below
// memberlist's 512-byte limit for any sane addresses. The gossip address is
// left out: memberlist knows it, and with port 0 it is chosen only later.
func encodeMeta(d *raftlbv1.Director) []byte {
	d = proto.CloneOf(d)
	d.GossipAddress = ""
	b, err := proto.Marshal(d)
	if err != nil || len(b) > memberlist.MetaMaxSize {
		return nil
	}
	return b
}

func decodeMeta(b []byte) *raftlbv1.Director {
	if len(b) == 0 {
		return nil
	}
	d := &raftlbv1.Director{}
	if err := proto.Unmarshal(b, d); err != nil {
		return nil
	}
	return d
}
