package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// waitFor bounds every wait of the end-to-end tests: elections, replication, start-up.
const waitFor = 30 * time.Second

// node is one director process of a test cluster.
type node struct {
	id                         string
	api, raft, gossip, metrics string
	dataDir, logPath           string
	args                       []string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit error, set before done closes
}

// testCluster is a set of directors on 127.0.0.1 with free ports and real TLS.
type testCluster struct {
	t     *testing.T
	tls   string
	nodes []*node
}

// freePorts returns n ports on 127.0.0.1 that were free for both TCP and UDP (memberlist
// uses both on its port) when asked.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for len(ports) < n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("pick free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		closers = append(closers, func() { ln.Close() })
		pc, err := net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // taken for UDP: try another
		}
		closers = append(closers, func() { pc.Close() })
		ports = append(ports, port)
	}
	return ports
}

func newTestCluster(t *testing.T, ids ...string) *testCluster {
	t.Helper()
	dir := t.TempDir()
	c := &testCluster{t: t, tls: filepath.Join(dir, "tls")}
	if r := run(t, nil, "tls", "init", "--dir", c.tls); r.code != 0 {
		t.Fatalf("tls init: %s", r.stderr)
	}
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i * 7)
	}
	keyFile := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 4*len(ids))
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	var peers, gossipPeers []string
	for i, id := range ids {
		n := &node{id: id, api: addr(4 * i), raft: addr(4*i + 1), gossip: addr(4*i + 2), metrics: addr(4*i + 3),
			dataDir: filepath.Join(dir, "data", id), logPath: filepath.Join(dir, id+".log")}
		c.nodes = append(c.nodes, n)
		peers = append(peers, id+"="+n.raft)
		gossipPeers = append(gossipPeers, n.gossip)
	}
	for _, n := range c.nodes {
		n.args = []string{"director", "--id", n.id, "--data-dir", n.dataDir,
			"--api-addr", n.api, "--raft-addr", n.raft, "--gossip-addr", n.gossip, "--metrics-addr", n.metrics,
			"--peers", strings.Join(peers, ","), "--gossip-peers", strings.Join(gossipPeers, ","),
			"--tls-ca", filepath.Join(c.tls, "ca.pem"), "--tls-cert", filepath.Join(c.tls, "director.pem"),
			"--tls-key", filepath.Join(c.tls, "director-key.pem"), "--gossip-key-file", keyFile, "--log-level", "debug"}
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.kill(n)
		}
		if t.Failed() {
			for _, n := range c.nodes {
				b, _ := os.ReadFile(n.logPath)
				t.Logf("log of %s:\n%s", n.id, tailLines(string(b), 60))
			}
		}
	})
	return c
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// start starts n's process and waits until its API port accepts connections.
func (c *testCluster) start(n *node) {
	c.t.Helper()
	logf, err := os.OpenFile(n.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(raftlbBin, n.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", n.id, err)
	}
	n.cmd, n.done, n.err = cmd, make(chan struct{}), nil
	go func() {
		n.err = cmd.Wait()
		close(n.done)
	}()
	deadline := time.Now().Add(waitFor)
	for {
		conn, err := net.DialTimeout("tcp", n.api, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-n.done:
			b, _ := os.ReadFile(n.logPath)
			c.t.Fatalf("%s exited during start-up: %v\n%s", n.id, n.err, tailLines(string(b), 40))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: API %s not up after %v: %v", n.id, n.api, waitFor, err)
		}
	}
}

// signal sends sig to n's process (only ours, by its pid) and waits for it to exit.
func (c *testCluster) signal(n *node, sig syscall.Signal) error {
	c.t.Helper()
	if n.cmd == nil {
		return nil
	}
	select {
	case <-n.done:
		return n.err
	default:
	}
	if err := n.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		c.t.Fatalf("signal %s: %v", n.id, err)
	}
	select {
	case <-n.done:
		return n.err
	case <-time.After(waitFor):
		_ = n.cmd.Process.Kill()
		<-n.done
		c.t.Fatalf("%s still running %v after %v", n.id, waitFor, sig)
		return nil
	}
}

func (c *testCluster) kill(n *node) { _ = c.signal(n, syscall.SIGKILL) }

// cli runs a client verb against n as the given identity (admin, reader, ...). The
// certificates come from the environment, as a user would set them; --server is a flag.
func (c *testCluster) cli(n *node, identity string, args ...string) result {
	c.t.Helper()
	env := []string{
		"RAFTLB_CA=" + filepath.Join(c.tls, "ca.pem"),
		"RAFTLB_CERT=" + filepath.Join(c.tls, identity+".pem"),
		"RAFTLB_KEY=" + filepath.Join(c.tls, identity+"-key.pem"),
		"RAFTLB_SERVER=127.0.0.1:1", // overridden by --server: flags win
	}
	return run(c.t, env, append(args, "--server", n.api, "--timeout", "10s")...)
}

// mustCLI is cli as admin that must succeed.
func (c *testCluster) mustCLI(n *node, args ...string) string {
	c.t.Helper()
	r := c.cli(n, "admin", args...)
	if r.code != 0 {
		c.t.Fatalf("raftlb %s via %s: exit %d: %s", strings.Join(args, " "), n.id, r.code, r.stderr)
	}
	return r.stdout
}

// getJSON runs a read verb with -o json against n and decodes it into m.
func (c *testCluster) getJSON(n *node, m proto.Message, args ...string) error {
	r := c.cli(n, "admin", append(args, "-o", "json")...)
	if r.code != 0 {
		return fmt.Errorf("%s via %s: %s", strings.Join(args, " "), n.id, r.stderr)
	}
	if err := protojson.Unmarshal([]byte(r.stdout), m); err != nil {
		return fmt.Errorf("decode %s: %w: %q", strings.Join(args, " "), err, r.stdout)
	}
	return nil
}

// eventually polls check until it returns nil or waitFor passes.
func (c *testCluster) eventually(what string, check func() error) {
	c.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not within %v: %v", what, waitFor, err)
		}
		time.Sleep(100 * time.Millisecond) // poll interval under a deadline
	}
}

// waitLeader waits until every node in ns reports the same leader, one of ns, in a
// term above minTerm, and returns it with the term.
func (c *testCluster) waitLeader(ns []*node, minTerm uint64) (*node, uint64) {
	c.t.Helper()
	var leader *node
	var term uint64
	c.eventually("agree on a leader", func() error {
		var ids []string
		for _, n := range ns {
			var st raftlbv1.GetStatusResponse
			if err := c.getJSON(n, &st, "status"); err != nil {
				return err
			}
			if st.GetLeaderId() == "" || st.GetTerm() <= minTerm {
				return fmt.Errorf("%s: leader %q term %d", n.id, st.GetLeaderId(), st.GetTerm())
			}
			ids = append(ids, st.GetLeaderId())
			term = max(term, st.GetTerm())
		}
		for _, id := range ids {
			if id != ids[0] {
				return fmt.Errorf("leaders differ: %v", ids)
			}
		}
		for _, n := range ns {
			if n.id == ids[0] {
				leader = n
				return nil
			}
		}
		return fmt.Errorf("leader %s is not among the nodes asked", ids[0])
	})
	return leader, term
}

// services is n's service list without the parts that legitimately differ per director.
func (c *testCluster) services(n *node, consistent bool) (*raftlbv1.ListServicesResponse, error) {
	args := []string{"service", "list"}
	if consistent {
		args = append(args, "--consistent")
	}
	var l raftlbv1.ListServicesResponse
	if err := c.getJSON(n, &l, args...); err != nil {
		return nil, err
	}
	l.Generation = 0
	for _, s := range l.GetServices() {
		s.Stats = nil
		for _, rs := range s.GetRealservers() {
			rs.Stats, rs.Health = nil, raftlbv1.HealthState_HEALTH_STATE_UNSPECIFIED
		}
	}
	return &l, nil
}

// waitServices waits until n's local view equals want.
func (c *testCluster) waitServices(n *node, want *raftlbv1.ListServicesResponse) {
	c.t.Helper()
	c.eventually(n.id+" has every service", func() error {
		got, err := c.services(n, false)
		if err != nil {
			return err
		}
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			return fmt.Errorf("services (-want +got):\n%s", diff)
		}
		return nil
	})
}

func others(ns []*node, not *node) []*node {
	var out []*node
	for _, n := range ns {
		if n != not {
			out = append(out, n)
		}
	}
	return out
}

func TestClusterEndToEnd(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, "d1", "d2", "d3")
	for _, n := range c.nodes {
		c.start(n)
	}
	leader, term := c.waitLeader(c.nodes, 0)
	follower := others(c.nodes, leader)[0]
	t.Logf("leader %s in term %d", leader.id, term)

	// A write through a follower is forwarded to the leader.
	out := c.mustCLI(follower, "service", "add", "--vip", "198.51.100.10", "--port", "80", "--proto", "tcp",
		"--scheduler", "wrr", "--persistence", "300", "--timeout-established", "600", "--failure-policy", "reschedule")
	if !strings.Contains(out, "198.51.100.10:80") {
		t.Errorf("service add printed %q, want the service", out)
	}
	c.mustCLI(follower, "realserver", "add", "--vip", "198.51.100.10", "--port", "80", "--address", "192.0.2.11", "--weight", "100", "--method", "dr")
	c.mustCLI(leader, "realserver", "add", "--vip", "198.51.100.10", "--port", "80", "--address", "192.0.2.12", "--weight", "50", "--method", "dr")
	c.mustCLI(follower, "realserver", "update", "--vip", "198.51.100.10", "--port", "80", "--address", "192.0.2.12", "--drain")
	c.mustCLI(follower, "service", "update", "--vip", "198.51.100.10", "--port", "80", "--scheduler", "mh")

	want, err := c.services(follower, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.GetServices()) != 1 {
		t.Fatalf("want 1 service, got %v", want)
	}
	s := want.GetServices()[0]
	if s.GetScheduler() != raftlbv1.Scheduler_SCHEDULER_MH || s.GetPersistenceSeconds() != 300 ||
		s.GetTimeouts().GetTcpEstablishedSeconds() != 600 || s.GetFailurePolicy() != raftlbv1.FailurePolicy_FAILURE_POLICY_RESCHEDULE {
		t.Errorf("service update lost or mangled settings: %v", s)
	}
	if n := len(s.GetRealservers()); n != 2 {
		t.Errorf("service has %d realservers, want 2: %v", n, s)
	}
	for _, rs := range s.GetRealservers() {
		if rs.GetAddress() == "192.0.2.12" && (rs.GetAdminState() != raftlbv1.AdminState_ADMIN_STATE_DRAIN || rs.GetWeight() != 50) {
			t.Errorf("realserver update: got %v, want drain with weight 50 kept", rs)
		}
	}
	for _, n := range c.nodes {
		c.waitServices(n, want)
	}
	for _, tc := range []struct {
		verb []string
		want string
	}{
		{[]string{"service", "get", "--vip", "198.51.100.10", "--port", "80"}, "192.0.2.12"},
		{[]string{"realserver", "list", "--vip", "198.51.100.10", "--port", "80"}, "drain"},
		{[]string{"status"}, leader.id},
	} {
		if out := c.mustCLI(follower, tc.verb...); !strings.Contains(out, tc.want) {
			t.Errorf("%s printed %q, want it to mention %q", strings.Join(tc.verb, " "), out, tc.want)
		}
	}

	t.Run("bad request carries the server's message", func(t *testing.T) {
		r := c.cli(follower, "admin", "service", "add", "--vip", "300.1.1.1", "--port", "80")
		if r.code == 0 || !strings.Contains(r.stderr, "300.1.1.1") || !strings.Contains(r.stderr, "(InvalidArgument)") ||
			!strings.HasPrefix(r.stderr, "raftlb: ") {
			t.Errorf("code %d, stderr %q; want non-zero and the server's InvalidArgument message", r.code, r.stderr)
		}
	})
	t.Run("reader may read but not write", func(t *testing.T) {
		if r := c.cli(follower, "reader", "service", "list"); r.code != 0 {
			t.Errorf("reader service list: code %d: %s", r.code, r.stderr)
		}
		r := c.cli(follower, "reader", "service", "add", "--vip", "198.51.100.11", "--port", "80")
		if r.code == 0 || !strings.Contains(r.stderr, "(PermissionDenied)") {
			t.Errorf("reader service add: code %d, stderr %q; want PermissionDenied", r.code, r.stderr)
		}
	})
	if got, err := c.services(leader, true); err != nil || !cmp.Equal(want, got, protocmp.Transform()) {
		t.Fatalf("rejected requests changed the state (err %v): %v", err, got)
	}

	// Kill the leader: the survivors elect a new one in a higher term, keep the state
	// and take writes.
	old := leader
	if err := c.signal(old, syscall.SIGKILL); err == nil {
		t.Fatalf("%s exited cleanly after SIGKILL", old.id)
	}
	survivors := others(c.nodes, old)
	leader, newTerm := c.waitLeader(survivors, term)
	t.Logf("after killing %s: leader %s in term %d", old.id, leader.id, newTerm)
	for _, n := range survivors {
		got, err := c.services(n, false)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s after failover (-want +got):\n%s", n.id, diff)
		}
	}
	follower = others(survivors, leader)[0]
	c.mustCLI(follower, "service", "add", "--vip", "198.51.100.20", "--port", "53", "--proto", "udp", "--scheduler", "sh")
	c.mustCLI(follower, "realserver", "add", "--vip", "198.51.100.20", "--port", "53", "--proto", "udp", "--address", "192.0.2.13", "--method", "tun")
	if want, err = c.services(follower, true); err != nil {
		t.Fatal(err)
	}
	if len(want.GetServices()) != 2 {
		t.Fatalf("after the write: %v", want)
	}

	// The killed node was down during that write: restarted, it catches up.
	c.start(old)
	c.waitServices(old, want)

	// Every node restarts from its data dir with the state intact. SIGTERM is a
	// graceful shutdown: exit status 0.
	for _, n := range c.nodes {
		if err := c.signal(n, syscall.SIGTERM); err != nil {
			t.Errorf("%s after SIGTERM: %v (want a clean exit)", n.id, err)
		}
	}
	for _, n := range c.nodes {
		c.start(n)
	}
	leader, restartTerm := c.waitLeader(c.nodes, newTerm)
	t.Logf("after a full restart: leader %s in term %d", leader.id, restartTerm)
	for _, n := range c.nodes {
		c.waitServices(n, want)
	}
	got, err := c.services(others(c.nodes, leader)[0], true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("consistent read after restart (-want +got):\n%s", diff)
	}
	c.mustCLI(leader, "service", "del", "--vip", "198.51.100.20", "--port", "53", "--proto", "udp")
	c.mustCLI(others(c.nodes, leader)[0], "realserver", "del", "--vip", "198.51.100.10", "--port", "80", "--address", "192.0.2.11")
	if got, err = c.services(leader, true); err != nil {
		t.Fatal(err)
	}
	if len(got.GetServices()) != 1 || len(got.GetServices()[0].GetRealservers()) != 1 {
		t.Errorf("after del: %v", got)
	}
}
