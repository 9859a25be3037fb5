package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftlb/raftlb/deploy/lab"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// TestAgentTraffic sends client traffic through the DR, TUN and NAT services once the
// agents configured the realservers: HTTP GETs from the client reach every realserver
// through each VIP, a megabyte echoes back intact through each, `raftlb conns list`
// shows the connections and `raftlb conns flush` empties every director's table, and
// TCP echo streams through each VIP stay unbroken while every agent is killed and
// restarted.
func TestAgentTraffic(t *testing.T) {
	t.Parallel()
	l := upLab(t, "rlbagt-", lab.UpOptions{StartDirectors: true, StartBackends: true, StartAgents: true})
	l.waitAgentsRegistered()
	l.addServices(true)
	l.waitConfigured()

	client := &http.Client{
		Transport: &http.Transport{DialContext: l.DialContext("client"), DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	for _, vip := range []string{vipDR, vipTUN, vipNAT} {
		seen := make(map[string]int)
		eventually(t, 30*time.Second, "GET http://"+vip+"/ reaches every realserver", func() error {
			resp, err := client.Get("http://" + vip + "/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return fmt.Errorf("read body: %w", err)
			}
			name := strings.TrimSpace(string(b))
			if !slices.Contains(realservers, name) {
				return fmt.Errorf("GET %s answered %q, not a realserver's name", vip, b)
			}
			seen[name]++
			if len(seen) < len(realservers) {
				return fmt.Errorf("answers so far %v", seen)
			}
			return nil
		})
		t.Logf("%s: answers %v", vip, seen)
	}

	for _, vip := range []string{vipDR, vipTUN, vipNAT} {
		if err := l.echoBulk(vip, 1<<20); err != nil {
			t.Fatalf("1 MB echo through %s: %v", vip, err)
		}
	}

	var streams []*echoStream
	for _, vip := range []string{vipDR, vipTUN, vipNAT} {
		streams = append(streams, l.startEcho(t, vip))
	}
	l.checkConnsListed(streams)
	restart := time.Now()
	for _, rs := range realservers {
		l.kill(lab.AgentName(rs))
	}
	for _, rs := range realservers {
		if _, err := l.StartAgent(raftlbBin, rs); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "restarted agents report", func() error {
		ag, err := l.agents()
		if err != nil {
			return err
		}
		for _, rs := range realservers {
			if seen := time.UnixMilli(ag[rs].GetLastSeenUnixMs()); seen.Before(restart) {
				return fmt.Errorf("%s last seen %v, before the restart", rs, seen)
			}
		}
		return nil
	})
	// Two resync passes of the restarted agents, with the streams running.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range streams {
			if err := s.failed(); err != nil {
				t.Fatalf("echo stream through %s broke: %v", s.vip, err)
			}
		}
		time.Sleep(100 * time.Millisecond) // poll interval under a deadline
	}
	for _, s := range streams {
		n, err := s.finish()
		if err != nil {
			t.Errorf("echo stream through %s: %v after %d round trips", s.vip, err, n)
		}
		t.Logf("echo stream through %s: %d round trips, unbroken", s.vip, n)
	}

	// The closed connections linger in the table (FIN_WAIT, CLOSE) until a flush. Wait
	// until every director has them closing, so no event about them is still on its way
	// to the replicated table (it would bring them back after the flush).
	eventually(t, 10*time.Second, "every director lists the streams as closing", func() error {
		for _, d := range lab.HostsWithRole(lab.RoleDirector) {
			var r raftlbv1.ListConnectionsResponse
			if err := l.getJSONFrom(d.Name, &r, "conns", "list"); err != nil {
				return err
			}
			for _, s := range streams {
				if !slices.ContainsFunc(r.GetConnections(), func(c *raftlbv1.Connection) bool {
					return c.GetVip() == s.vip && c.GetClientPort() == uint32(s.conn.LocalAddr().(*net.TCPAddr).Port) &&
						c.GetState() != raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED
				}) {
					return fmt.Errorf("%s does not list the stream through %s as closing", d.Name, s.vip)
				}
			}
		}
		return nil
	})
	l.mustCLI("conns", "flush")
	for _, d := range lab.HostsWithRole(lab.RoleDirector) {
		var r raftlbv1.ListConnectionsResponse
		if err := l.getJSONFrom(d.Name, &r, "conns", "list"); err != nil {
			t.Fatalf("conns list on %s: %v", d.Name, err)
		}
		if n := len(r.GetConnections()); n != 0 {
			t.Errorf("conns list on %s after conns flush: %d entries, want none: %v", d.Name, n, r.GetConnections())
		}
	}
}

// checkConnsListed checks that `raftlb conns list` on the VIPs' owner shows each
// stream's connection, to a realserver of the service, established.
func (l *testLab) checkConnsListed(streams []*echoStream) {
	l.tb.Helper()
	owners := l.owners()
	for _, s := range streams {
		local := s.conn.LocalAddr().(*net.TCPAddr)
		var r raftlbv1.ListConnectionsResponse
		if err := l.getJSONFrom(owners[s.vip], &r, "conns", "list", "--vip", s.vip); err != nil {
			l.tb.Fatalf("conns list --vip %s: %v", s.vip, err)
		}
		found := false
		for _, c := range r.GetConnections() {
			if c.GetVip() != s.vip || c.GetClientPort() != uint32(local.Port) {
				continue
			}
			found = true
			if c.GetState() != raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED || c.GetVport() != lab.BackendEchoPort {
				l.tb.Errorf("conns list: stream through %s is %v", s.vip, c)
			}
		}
		if !found {
			l.tb.Errorf("conns list --vip %s on %s lacks the stream from port %d: %v", s.vip, owners[s.vip], local.Port, r.GetConnections())
		}
	}
}

// owners maps each announced address to its owner, as d1 sees it.
func (l *testLab) owners() map[string]string {
	l.tb.Helper()
	var r raftlbv1.ListAddressesResponse
	if err := l.getJSON(&r, "address", "list"); err != nil {
		l.tb.Fatalf("address list: %v", err)
	}
	out := make(map[string]string)
	for _, a := range r.GetAddresses() {
		out[a.GetAddress()] = a.GetOwner()
	}
	return out
}

// echoBulk sends n pseudo-random bytes to vip's echo port on one connection and
// checks that exactly they come back.
func (l *testLab) echoBulk(vip string, n int) error {
	ctx, cancel := context.WithTimeout(l.ctx, 20*time.Second)
	defer cancel()
	addr := netip.AddrPortFrom(netip.MustParseAddr(vip), lab.BackendEchoPort).String()
	conn, err := l.DialContext("client")(ctx, "tcp4", addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i*7 + i>>8)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(want)
		werr <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, want) {
		return errors.New("echoed bytes differ from those sent")
	}
	return nil
}

// echoStream is one TCP connection to a VIP's echo port, sending a numbered line every
// 20 ms and checking each comes back.
type echoStream struct {
	vip  string
	conn net.Conn
	n    atomic.Int64
	err  atomic.Pointer[error]
	stop chan struct{}
	done chan struct{}
}

func (l *testLab) startEcho(t *testing.T, vip string) *echoStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	addr := netip.AddrPortFrom(netip.MustParseAddr(vip), lab.BackendEchoPort).String()
	conn, err := l.DialContext("client")(ctx, "tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	s := &echoStream{vip: vip, conn: conn, stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { s.finish() })
	go s.run()
	return s
}

func (s *echoStream) run() {
	defer close(s.done)
	r := bufio.NewReader(s.conn)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		line := fmt.Sprintf("%s seq %d\n", s.vip, i)
		_ = s.conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(s.conn, line); err != nil {
			s.fail(fmt.Errorf("write seq %d: %w", i, err))
			return
		}
		got, err := r.ReadString('\n')
		if err != nil {
			s.fail(fmt.Errorf("read seq %d: %w", i, err))
			return
		}
		if got != line {
			s.fail(fmt.Errorf("seq %d echoed %q, want %q", i, got, line))
			return
		}
		s.n.Add(1)
	}
}

func (s *echoStream) fail(err error) { s.err.CompareAndSwap(nil, &err) }

// failed returns the stream's error so far, nil while it is unbroken.
func (s *echoStream) failed() error {
	if p := s.err.Load(); p != nil {
		return *p
	}
	return nil
}

// finish stops the stream and returns its round trips and error; it may be called twice.
func (s *echoStream) finish() (int64, error) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	if err := s.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		s.fail(fmt.Errorf("close: %w", err))
	}
	return s.n.Load(), s.failed()
}
