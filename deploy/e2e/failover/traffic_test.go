package failover

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftlb/raftlb/deploy/lab"
)

// echoOnce opens a new connection to vip's echo port from the client, sends a line
// and checks it comes back.
func (l *haLab) echoOnce(vip string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(l.ctx, timeout)
	defer cancel()
	addr := netip.AddrPortFrom(netip.MustParseAddr(vip), lab.BackendEchoPort).String()
	c, err := l.DialContext("client")(ctx, "tcp4", addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	msg := []byte("ping " + vip + "\n")
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write to %s: %w", addr, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read from %s: %w", addr, err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("%s echoed %q, want %q", addr, got, msg)
	}
	return nil
}

// echoStream is one long-lived TCP connection to a VIP's echo port, sending a numbered,
// padded line every interval and checking each comes back intact and in order: a
// reset, a lost or a corrupted byte ends it with an error.
type echoStream struct {
	vip  string
	conn net.Conn

	n      atomic.Int64 // round trips completed
	mu     sync.Mutex
	err    error
	last   time.Time     // last completed round trip
	maxGap time.Duration // longest time between two round trips
	gapAt  time.Time     // when the longest gap ended
	stop   chan struct{}
	done   chan struct{}
}

// streamInterval is how often a stream sends a line.
const streamInterval = 20 * time.Millisecond

func (l *haLab) startStream(vip string) *echoStream {
	l.tb.Helper()
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	addr := netip.AddrPortFrom(netip.MustParseAddr(vip), lab.BackendEchoPort).String()
	conn, err := l.DialContext("client")(ctx, "tcp4", addr)
	if err != nil {
		l.tb.Fatalf("dial %s: %v", addr, err)
	}
	s := &echoStream{vip: vip, conn: conn, last: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	l.tb.Cleanup(func() { s.finish() })
	go s.run()
	return s
}

func (s *echoStream) localPort() int { return s.conn.LocalAddr().(*net.TCPAddr).Port }

func (s *echoStream) run() {
	defer close(s.done)
	r := bufio.NewReader(s.conn)
	tick := time.NewTicker(streamInterval)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		line := fmt.Sprintf("%s %08d %s\n", s.vip, i, bytes.Repeat([]byte{byte('a' + i%26)}, 48))
		// A failover stalls a stream for about a lease plus TCP's retransmission
		// backoff; anything near this deadline is a broken stream.
		if err := s.conn.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
			s.fail(fmt.Errorf("set deadline: %w", err))
			return
		}
		if _, err := s.conn.Write([]byte(line)); err != nil {
			s.fail(fmt.Errorf("write line %d: %w", i, err))
			return
		}
		got, err := r.ReadString('\n')
		if err != nil {
			s.fail(fmt.Errorf("read line %d: %w", i, err))
			return
		}
		if got != line {
			s.fail(fmt.Errorf("line %d came back as %q", i, got))
			return
		}
		now := time.Now()
		s.mu.Lock()
		if gap := now.Sub(s.last); gap > s.maxGap {
			s.maxGap, s.gapAt = gap, now
		}
		s.last = now
		s.mu.Unlock()
		s.n.Add(1)
	}
}

func (s *echoStream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// failed returns the stream's error, if it broke.
func (s *echoStream) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// gap returns the longest pause between round trips so far and resets it.
func (s *echoStream) gap() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.maxGap
	s.maxGap = 0
	return g
}

// finish stops the stream and returns its round trips and error.
func (s *echoStream) finish() (int64, error) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.conn.Close()
	return s.n.Load(), s.failed()
}

// startStreams starts per streams to each of vips.
func (l *haLab) startStreams(per int, vips ...string) []*echoStream {
	var out []*echoStream
	for _, v := range vips {
		for range per {
			out = append(out, l.startStream(v))
		}
	}
	return out
}

// progressed waits until every stream has completed more round trips than it had,
// by at least n, and none has broken: the streams run through whoever owns now.
func progressed(tb testing.TB, streams []*echoStream, n int64, timeout time.Duration) {
	tb.Helper()
	base := make([]int64, len(streams))
	for i, s := range streams {
		base[i] = s.n.Load()
	}
	eventually(tb, timeout, "every stream makes progress", func() error {
		for i, s := range streams {
			if err := s.failed(); err != nil {
				tb.Fatalf("stream to %s from port %d broke: %v", s.vip, s.localPort(), err)
			}
			if s.n.Load() < base[i]+n {
				return fmt.Errorf("stream to %s from port %d: %d round trips, want %d", s.vip, s.localPort(), s.n.Load(), base[i]+n)
			}
		}
		return nil
	})
}

// shortConns opens a new connection to each VIP every interval and records, per
// attempt, when it started and whether the echo came back.
type shortConns struct {
	mu       sync.Mutex
	attempts []attempt
	stop     chan struct{}
	done     sync.WaitGroup
}

type attempt struct {
	vip   string
	start time.Time
	err   error
}

func (l *haLab) startShortConns(interval time.Duration, vips ...string) *shortConns {
	sc := &shortConns{stop: make(chan struct{})}
	for _, vip := range vips {
		sc.done.Go(func() {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				select {
				case <-sc.stop:
					return
				case <-tick.C:
				}
				start := time.Now()
				err := l.echoOnce(vip, time.Second)
				sc.mu.Lock()
				sc.attempts = append(sc.attempts, attempt{vip: vip, start: start, err: err})
				sc.mu.Unlock()
			}
		})
	}
	l.tb.Cleanup(sc.finish)
	return sc
}

func (sc *shortConns) finish() {
	select {
	case <-sc.stop:
	default:
		close(sc.stop)
	}
	sc.done.Wait()
}

// since returns the attempts started at or after t.
func (sc *shortConns) since(t time.Time) []attempt {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	var out []attempt
	for _, a := range sc.attempts {
		if !a.start.Before(t) {
			out = append(out, a)
		}
	}
	return out
}
