package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/ha"
)

// forwardedKey marks a request a follower forwarded to the leader. A
// director that receives one and is not the leader answers NOT_LEADER
// instead of forwarding again, so requests never travel in circles.
const forwardedKey = "raftlb-forwarded"

// maxLeaderAttempts bounds how often one request is sent to a leader that
// turns out not to be one any more.
const maxLeaderAttempts = 5

// forwarder keeps one client connection to the current leader's API,
// dialled with this director's certificate.
type forwarder struct {
	creds credentials.TransportCredentials

	mu   sync.Mutex
	addr string
	conn *grpc.ClientConn
}

func newForwarder(clientTLS *tls.Config) *forwarder {
	f := &forwarder{creds: insecure.NewCredentials()}
	if clientTLS != nil {
		f.creds = credentials.NewTLS(clientTLS)
	}
	return f
}

// connTo returns the cached connection to addr, replacing the one to a
// previous leader.
func (f *forwarder) connTo(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil && f.addr == addr {
		return f.conn, nil
	}
	if f.conn != nil {
		_ = f.conn.Close() // Calls still on it fail and are retried against the new leader.
		f.conn = nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(f.creds))
	if err != nil {
		return nil, fmt.Errorf("dial leader %s: %w", addr, err)
	}
	f.addr, f.conn = addr, c
	return c, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil {
		_ = f.conn.Close() // Shutting down; nothing to do about a failure.
		f.conn = nil
	}
}

func isForwarded(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(forwardedKey)) > 0
}

// leaderAPI finds the leader's id and API address: from the replicated
// directors first, else from memberlist metadata (the leader may not have
// announced itself yet).
func (d *Director) leaderAPI() (string, string, error) {
	_, id := d.raft.LeaderWithID()
	if id == "" {
		return "", "", ErrNoLeader
	}
	for _, dir := range d.fsm.Directors() {
		if dir.GetId() == string(id) && dir.GetApiAddress() != "" {
			return string(id), dir.GetApiAddress(), nil
		}
	}
	if m, ok := d.gossip.members()[string(id)]; ok && m.Director.GetApiAddress() != "" {
		return string(id), m.Director.GetApiAddress(), nil
	}
	return string(id), "", fmt.Errorf("find api address of leader %s: %w", id, ErrNoLeader)
}

// onLeader runs local when this director is the leader and remote against
// the leader's API otherwise, retrying a bounded number of times while
// leadership moves. idempotent requests are also retried when the leader
// could not be reached; writes only when the leader said it is not one,
// because then nothing happened.
func (d *Director) onLeader(ctx context.Context, idempotent bool,
	local func(context.Context) error,
	remote func(context.Context, *grpc.ClientConn) error,
) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.WriteTimeout)
	defer cancel()
	var lastErr error
	backoff := 10 * time.Millisecond
	for attempts := 0; attempts < maxLeaderAttempts; {
		select {
		case <-d.stopping:
			return ErrShuttingDown
		default:
		}
		id, addr, err := d.leaderAPI()
		switch {
		case err != nil:
			// No leader yet, or its address is unknown: wait, costs no attempt.
			lastErr = err
		case id == d.cfg.ID:
			attempts++
			err = local(ctx)
			if err == nil || !(errors.Is(err, raft.ErrNotLeader) || errors.Is(err, ErrNotLeader) ||
				errors.Is(err, ha.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress)) {
				return err
			}
			lastErr = err
		case isForwarded(ctx):
			return fmt.Errorf("leader is %s: %w", id, ErrNotLeader)
		default:
			attempts++
			conn, cerr := d.fwd.connTo(addr)
			if cerr != nil {
				return cerr
			}
			err = remote(metadata.AppendToOutgoingContext(ctx, forwardedKey, d.cfg.ID), conn)
			if err == nil {
				d.metrics.forwards.WithLabelValues("ok").Inc()
				return nil
			}
			retry := isNotLeader(err) || (idempotent && status.Code(err) == codes.Unavailable)
			if !retry {
				d.metrics.forwards.WithLabelValues("error").Inc()
				return err
			}
			d.metrics.forwards.WithLabelValues("retry").Inc()
			lastErr = err
		}
		if !sleepCtx(ctx, backoff) {
			if lastErr == nil {
				return fmt.Errorf("reach raft leader: %w", ctx.Err())
			}
			return fmt.Errorf("reach raft leader: %w (last: %w)", ctx.Err(), lastErr)
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
	return lastErr
}

// propose validates cmd, stamps it and has the leader commit it. The
// returned error carries the state machine's verdict when it refused.
func (d *Director) propose(ctx context.Context, cmd *raftlbv1.Command) (*raftlbv1.Result, error) {
	if err := fsm.ValidateCommand(cmd); err != nil {
		return nil, err
	}
	cmd.UnixNano = time.Now().UnixNano()
	cmd.Origin = d.cfg.ID
	var resp *raftlbv1.ApplyResponse
	err := d.onLeader(ctx, false,
		func(ctx context.Context) error {
			r, err := d.applyLocal(ctx, cmd)
			resp = r
			return err
		},
		func(ctx context.Context, conn *grpc.ClientConn) error {
			r, err := raftlbv1.NewInternalServiceClient(conn).Apply(ctx, &raftlbv1.ApplyRequest{Command: cmd})
			resp = r
			return err
		})
	if err != nil {
		return nil, err
	}
	d.waitApplied(ctx, resp.GetIndex())
	return resp.GetResult(), fsm.ResultError(resp.GetResult())
}

// waitApplied gives a client read-your-writes on the director it talks to:
// a write forwarded to the leader returns only once this director has
// applied it too (normally one commit round, a few milliseconds). The write
// is committed either way, so giving up after a while is not an error.
func (d *Director) waitApplied(ctx context.Context, index uint64) {
	if index == 0 || d.applied.index.Load() >= index {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for d.applied.index.Load() < index {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// applyLocal commits cmd through this node's Raft; the leader only.
func (d *Director) applyLocal(ctx context.Context, cmd *raftlbv1.Command) (*raftlbv1.ApplyResponse, error) {
	b, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	f := d.raft.Apply(b, d.cfg.WriteTimeout)
	if err := waitFuture(ctx, f); err != nil {
		if errors.Is(err, raft.ErrLeadershipLost) {
			return nil, fmt.Errorf("apply command: %w", ErrOutcomeUnknown)
		}
		return nil, fmt.Errorf("apply command: %w", err)
	}
	res, ok := f.Response().(*raftlbv1.Result)
	if !ok {
		_, err := fsm.ResultOf(f.Response())
		return nil, err
	}
	return &raftlbv1.ApplyResponse{Index: f.Index(), Result: res}, nil
}

// forwardUnary sends the RPC being served (same method, same request) to the
// leader when this director is not it, as a director client.
func forwardUnary[Resp any](ctx context.Context, d *Director, idempotent bool, req proto.Message,
	local func(context.Context) (*Resp, error),
) (*Resp, error) {
	method, ok := grpc.Method(ctx)
	if !ok {
		return nil, errors.New("forward: no method in context")
	}
	var out *Resp
	err := d.onLeader(ctx, idempotent,
		func(ctx context.Context) error {
			r, err := local(ctx)
			out = r
			return err
		},
		func(ctx context.Context, conn *grpc.ClientConn) error {
			r := new(Resp)
			if err := conn.Invoke(ctx, method, req, r); err != nil {
				return err
			}
			out = r
			return nil
		})
	return out, err
}

// linearize makes a following read linearizable: this node is still the
// leader (a quorum says so) and its state machine holds every entry of
// earlier terms (the leadership barrier).
func (d *Director) linearize(ctx context.Context) error {
	if err := waitFuture(ctx, d.raft.VerifyLeader()); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("verify leader: %w", ErrNotLeader)
		}
		return fmt.Errorf("verify leader: %w", err)
	}
	term := d.raft.CurrentTerm()
	if d.barrierTerm.Load() == term {
		return nil
	}
	if err := waitFuture(ctx, d.raft.Barrier(d.cfg.WriteTimeout)); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("barrier: %w", ErrNotLeader)
		}
		return fmt.Errorf("barrier: %w", err)
	}
	d.barrierTerm.Store(term)
	return nil
}

// read serves a read locally, or, when consistent, on the leader after
// linearize (forwarding the same RPC when this director is a follower).
func read[Resp any](ctx context.Context, d *Director, consistent bool, req proto.Message,
	local func() (*Resp, error),
) (*Resp, error) {
	if !consistent {
		return local()
	}
	return forwardUnary(ctx, d, true, req, func(ctx context.Context) (*Resp, error) {
		if err := d.linearize(ctx); err != nil {
			return nil, err
		}
		return local()
	})
}
