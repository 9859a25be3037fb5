package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/raftlb/raftlb/deploy/lab"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/pki"
)

// The services the agent tests create, one per forwarding method, each with every
// realserver: DR and TUN by their front addresses, NAT by their inside ones.
const (
	vipDR  = "198.51.100.10"
	vipTUN = "198.51.100.20"
	vipNAT = "198.51.100.30"
)

// The agent's default tables and rule priority, as the lab runs it.
const (
	natTable = "4242"
	mssTable = "4243"
	rulePrio = 4242
)

// addServices creates the NAT gateway address, the DR, TUN and NAT services on port 80
// (and, with echo, on the echo port too) and puts every realserver in each.
func (l *testLab) addServices(echo bool) {
	l.tb.Helper()
	l.mustCLI("address", "set", "--address", lab.Gateway.String(), "--kind", "nat-gateway")
	ports := []string{"80"}
	if echo {
		ports = append(ports, fmt.Sprint(lab.BackendEchoPort))
	}
	for _, port := range ports {
		for _, svc := range []struct{ vip, method string }{{vipDR, "dr"}, {vipTUN, "tun"}, {vipNAT, "nat"}} {
			l.mustCLI("service", "add", "--vip", svc.vip, "--port", port, "--scheduler", "rr")
			for _, name := range realservers {
				h, err := lab.LookupHost(name)
				if err != nil {
					l.tb.Fatal(err)
				}
				addr := h.Front
				if svc.method == "nat" {
					addr = h.Inside
				}
				l.mustCLI("realserver", "add", "--vip", svc.vip, "--port", port, "--address", addr.String(), "--method", svc.method)
			}
		}
	}
}

// checkConfigured says what host's kernel lacks of the configuration the agent derives
// from the services of addServices, with TUN decapsulated in decap mode.
func checkConfigured(st kernelState, host, decap string) error {
	h, err := lab.LookupHost(host)
	if err != nil {
		return err
	}
	var missing []string
	want := func(ok bool, what string) {
		if !ok {
			missing = append(missing, what)
		}
	}
	want(slices.Contains(st.Addrs, "lo "+vipDR+"/32"), "DR VIP "+vipDR+"/32 on lo")
	want(slices.Contains(st.Addrs, "lo "+vipTUN+"/32"), "TUN VIP "+vipTUN+"/32 on lo")
	want(!slices.Contains(st.Addrs, "lo "+vipNAT+"/32"), "no NAT VIP on lo")
	for _, ifc := range []string{"all", lab.FrontIface, lab.InsideIface} {
		want(slices.Contains(st.Sysctls, ifc+"/arp_ignore=1"), ifc+"/arp_ignore=1")
		want(slices.Contains(st.Sysctls, ifc+"/arp_announce=2"), ifc+"/arp_announce=2")
	}
	rules := st.rules()
	want(slices.Contains(rules, ipRule{Priority: rulePrio, Src: vipTUN, Table: mssTable}),
		fmt.Sprintf("rule %d: from %s lookup %s (MSS clamp)", rulePrio, vipTUN, mssTable))
	want(slices.Contains(rules, ipRule{Priority: rulePrio, Src: h.Inside.String(), IPProto: "tcp", Sport: 80, Table: natTable}),
		fmt.Sprintf("rule %d: from %s ipproto tcp sport 80 lookup %s (NAT return)", rulePrio, h.Inside, natTable))
	// The realserver's own traffic from its inside address keeps the main table.
	want(!slices.Contains(rules, ipRule{Priority: rulePrio, Src: h.Inside.String(), Table: natTable}),
		fmt.Sprintf("no rule %d: from %s lookup %s (all of the realserver's traffic)", rulePrio, h.Inside, natTable))
	want(!slices.ContainsFunc(rules, func(r ipRule) bool { return r.Src == vipDR }), "no rule for the DR VIP")
	routes := st.routes()
	want(slices.ContainsFunc(routes, func(r ipRoute) bool {
		return r.Table == natTable && r.Dst == "default" && r.Gateway == lab.Gateway.String() && r.Dev == lab.InsideIface
	}), fmt.Sprintf("route default via %s dev %s table %s", lab.Gateway, lab.InsideIface, natTable))
	want(slices.ContainsFunc(routes, func(r ipRoute) bool {
		return r.Table == mssTable && r.Dst == lab.FrontNet.String() && r.Dev == lab.FrontIface &&
			slices.ContainsFunc(r.Metrics, func(m map[string]int) bool { return m["advmss"] == 1440 })
	}), fmt.Sprintf("route %s dev %s table %s advmss 1440", lab.FrontNet, lab.FrontIface, mssTable))
	switch decap {
	case "bpf":
		for _, ifc := range []string{lab.FrontIface, lab.InsideIface} {
			want(slices.ContainsFunc(st.Filters, func(f string) bool {
				return strings.HasPrefix(f, ifc+" ingress ") && strings.Contains(f, `"bpf_name":"raftlb_decap"`)
			}), "TC decap filter on "+ifc+" ingress")
		}
	case "ipip":
		want(slices.ContainsFunc(st.Links, func(l string) bool { return strings.HasPrefix(l, "rlbtun0 kind=ipip ") }), "ipip device rlbtun0")
	default:
		missing = append(missing, fmt.Sprintf("decap mode %q (want bpf or ipip)", decap))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s lacks: %s", host, strings.Join(missing, "; "))
	}
	return nil
}

// waitConfigured waits until every realserver's agent reports the TUN decap mode and
// its kernel holds the configuration, and returns each kernel's state.
func (l *testLab) waitConfigured() map[string]kernelState {
	l.tb.Helper()
	states := make(map[string]kernelState)
	eventually(l.tb, 30*time.Second, "every realserver configured", func() error {
		ag, err := l.agents()
		if err != nil {
			return err
		}
		for _, rs := range realservers {
			st, err := l.kernel(rs)
			if err != nil {
				return err
			}
			if err := checkConfigured(st, rs, ag[rs].GetDecapMode()); err != nil {
				return err
			}
			states[rs] = st
		}
		return nil
	})
	return states
}

// waitState waits until host's kernel is exactly want.
func (l *testLab) waitState(host string, want kernelState, timeout time.Duration, what string) {
	l.tb.Helper()
	eventually(l.tb, timeout, what, func() error {
		got, err := l.kernel(host)
		if err != nil {
			return err
		}
		if diff := cmp.Diff(want, got); diff != "" {
			return fmt.Errorf("%s kernel (-want +got):\n%s", host, diff)
		}
		return nil
	})
}

// realserverListApplied checks `raftlb realserver list` for vip: every realserver row
// names its agent and says applied.
func (l *testLab) realserverListApplied(vip string) error {
	out, err := l.cli("realserver", "list", "--vip", vip, "--port", "80")
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1+len(realservers) {
		return fmt.Errorf("realserver list %s: want a header and %d rows:\n%s", vip, len(realservers), out)
	}
	header := strings.Fields(lines[0])
	if !slices.Equal(header[8:], []string{"AGENT", "APPLIED", "AGENT", "STATE", "LAST", "SEEN"}) {
		return fmt.Errorf("realserver list %s: header %q lacks the agent columns", vip, lines[0])
	}
	for _, row := range lines[1:] {
		f := strings.Fields(row)
		if len(f) < 11 || !strings.HasPrefix(f[8], "rs") || f[10] != "applied" {
			return fmt.Errorf("realserver list %s: row %q is not applied by its agent", vip, row)
		}
	}
	return nil
}

// TestAgentConfiguresRealservers drives the agents through the CLI and reads the result
// back from each realserver's kernel: configuration per method, status in the CLI, drift
// repaired, a killed agent's configuration kept across its restart, --cleanup, and the
// exact prior state once the services are gone.
func TestAgentConfiguresRealservers(t *testing.T) {
	t.Parallel()
	l := upLab(t, "rlbag2-", lab.UpOptions{StartDirectors: true, StartAgents: true})
	l.waitAgentsRegistered()
	before := make(map[string]kernelState)
	for _, rs := range realservers {
		st, err := l.kernel(rs)
		if err != nil {
			t.Fatal(err)
		}
		before[rs] = st
	}

	start := time.Now()
	l.addServices(false)
	configured := l.waitConfigured()
	t.Logf("every realserver configured %v after the first write", time.Since(start).Round(time.Millisecond))
	ag, err := l.agents()
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range realservers {
		a := ag[rs]
		t.Logf("%s: applied generation %d, decap %s, vips %v", rs, a.GetAppliedGeneration(), a.GetDecapMode(), a.GetVips())
	}
	eventually(t, 15*time.Second, "realserver list shows every realserver applied", func() error {
		for _, vip := range []string{vipDR, vipTUN, vipNAT} {
			if err := l.realserverListApplied(vip); err != nil {
				return err
			}
		}
		return nil
	})
	if out := l.mustCLI("status"); !strings.Contains(out, "VIPS APPLIED") || !strings.Contains(out, "2/2") {
		t.Errorf("status lacks the agents' section with 2/2 VIPs applied:\n%s", out)
	}

	t.Run("drift is repaired", func(t *testing.T) {
		h, _ := lab.LookupHost("rs1")
		for _, d := range []struct {
			what string
			argv []string
		}{
			{"VIP deleted from lo", []string{"ip", "addr", "del", vipDR + "/32", "dev", "lo"}},
			{"NAT rule deleted", []string{"ip", "rule", "del", "priority", fmt.Sprint(rulePrio), "from", h.Inside.String(), "ipproto", "tcp", "sport", "80", "lookup", natTable}},
			{"MSS route deleted", []string{"ip", "route", "del", lab.FrontNet.String(), "dev", lab.FrontIface, "table", mssTable}},
			{"arp_ignore flipped", []string{"sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/" + lab.FrontIface + "/arp_ignore"}},
		} {
			if _, err := l.Exec(l.ctx, "rs1", d.argv...); err != nil {
				t.Fatalf("%s: %v", d.what, err)
			}
			t0 := time.Now()
			l.waitState("rs1", configured["rs1"], 10*time.Second, d.what+" is repaired")
			t.Logf("%s: repaired in %v", d.what, time.Since(t0).Round(10*time.Millisecond))
		}
	})

	t.Run("killed agent restarts without touching the kernel", func(t *testing.T) {
		mon := l.monitor(t, "rs2")
		l.kill(lab.AgentName("rs2"))
		if got, err := l.kernel("rs2"); err != nil || !cmp.Equal(configured["rs2"], got) {
			t.Fatalf("rs2 kernel changed when its agent was killed (err %v):\n%s", err, cmp.Diff(configured["rs2"], got))
		}
		restart := time.Now()
		if _, err := l.StartAgent(raftlbBin, "rs2"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "restarted rs2 agent reports", func() error {
			ag, err := l.agents()
			if err != nil {
				return err
			}
			if seen := time.UnixMilli(ag["rs2"].GetLastSeenUnixMs()); seen.Before(restart) {
				return fmt.Errorf("rs2 last seen %v, before the restart at %v", seen, restart)
			}
			return nil
		})
		// Two resync passes of the restarted agent: nothing may change.
		l.stable("rs2", configured["rs2"], 5*time.Second)
		if ev := mon.events(); ev != "" {
			t.Errorf("rs2 kernel saw netlink changes across the agent's restart:\n%s", ev)
		}
	})

	t.Run("stopped agent keeps the config, cleanup removes it", func(t *testing.T) {
		if err := l.Signal(lab.AgentName("rs3"), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		l.waitProcessGone(lab.AgentName("rs3"))
		if got, err := l.kernel("rs3"); err != nil || !cmp.Equal(configured["rs3"], got) {
			t.Fatalf("rs3 kernel changed when its agent stopped (err %v):\n%s", err, cmp.Diff(configured["rs3"], got))
		}
		if out, err := l.Exec(l.ctx, "rs3", raftlbBin, "agent", "--cleanup", "--state-dir", l.AgentStateDir("rs3")); err != nil {
			t.Fatalf("agent --cleanup: %v", err)
		} else {
			t.Logf("agent --cleanup: %s", bytes.TrimSpace(out))
		}
		if got, err := l.kernel("rs3"); err != nil || !cmp.Equal(before["rs3"], got) {
			t.Fatalf("rs3 after agent --cleanup (err %v) (-before +after):\n%s", err, cmp.Diff(before["rs3"], got))
		}
		if _, err := l.StartAgent(raftlbBin, "rs3"); err != nil {
			t.Fatal(err)
		}
		l.waitConfigured()
	})

	t.Run("removing the services restores the prior state", func(t *testing.T) {
		for _, vip := range []string{vipDR, vipTUN, vipNAT} {
			l.mustCLI("service", "del", "--vip", vip, "--port", "80")
		}
		for _, rs := range realservers {
			l.waitState(rs, before[rs], 15*time.Second, rs+" back to its state before the services")
		}
		eventually(t, 10*time.Second, "agents report no VIPs", func() error {
			ag, err := l.agents()
			if err != nil {
				return err
			}
			for _, rs := range realservers {
				if a := ag[rs]; len(a.GetVips()) != 0 || a.GetError() != "" || a.GetDecapMode() != "" {
					return fmt.Errorf("%s reports %v", rs, a)
				}
			}
			return nil
		})
	})
}

// stable polls host's kernel for d and fails at the first difference from want.
func (l *testLab) stable(host string, want kernelState, d time.Duration) {
	l.tb.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		got, err := l.kernel(host)
		if err != nil {
			l.tb.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			l.tb.Fatalf("%s kernel changed (-want +got):\n%s", host, diff)
		}
	}
}

// netlinkMonitor records the address, route, rule and link events of one namespace.
type netlinkMonitor struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	from int // events before this offset were the start-up marker
}

func (m *netlinkMonitor) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.buf.Write(p)
}

func (m *netlinkMonitor) output() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.buf.String()
}

// events returns what the monitor saw since it was ready.
func (m *netlinkMonitor) events() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.TrimSpace(m.buf.String()[m.from:])
}

// monitor starts `ip monitor` in host's namespace and returns once it provably
// listens: a marker route in a scratch table is added and deleted until it shows both.
// The monitor is stopped (by its pid) in t's cleanup.
func (l *testLab) monitor(t *testing.T, host string) *netlinkMonitor {
	t.Helper()
	m := &netlinkMonitor{}
	cmd := exec.Command("ip", "-n", l.NS(host), "monitor", "address", "route", "rule", "link")
	cmd.Stdout, cmd.Stderr = m, m
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ip monitor: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	const marker = "192.0.2.250"
	route := []string{"ip", "route", "%s", marker + "/32", "dev", lab.FrontIface, "table", "99"}
	op := func(verb string) []string {
		argv := slices.Clone(route)
		argv[2] = verb
		return argv
	}
	eventually(t, 10*time.Second, "ip monitor is listening", func() error {
		select {
		case <-done:
			return errors.New("ip monitor exited: " + m.output())
		default:
		}
		if _, err := l.Exec(l.ctx, host, op("add")...); err != nil {
			return err
		}
		if _, err := l.Exec(l.ctx, host, op("del")...); err != nil {
			return err
		}
		if out := m.output(); !strings.Contains(out, "Deleted "+marker) {
			return fmt.Errorf("marker not seen yet: %q", out)
		}
		return nil
	})
	m.mu.Lock()
	m.from = m.buf.Len()
	m.mu.Unlock()
	return m
}

// TestAgentIdentity: a second agent in a realserver, an agent whose certificate names
// another realserver, one registering addresses its certificate does not hold, and an
// agent's calls outside its own id all fail with errors that say why, and none of them
// disturbs the agent that is entitled to the id.
func TestAgentIdentity(t *testing.T) {
	t.Parallel()
	l := upLab(t, "rlbagi-", lab.UpOptions{StartDirectors: true, StartAgents: true})
	l.waitAgentsRegistered()
	orig, err := l.agents()
	if err != nil {
		t.Fatal(err)
	}
	args, err := l.AgentArgs("rs1")
	if err != nil {
		t.Fatal(err)
	}
	withFlag := func(args []string, flag, val string) []string {
		out := slices.Clone(args)
		i := slices.Index(out, flag)
		if i < 0 {
			return append(out, flag, val)
		}
		out[i+1] = val
		return out
	}

	t.Run("second agent in the same realserver", func(t *testing.T) {
		for _, tc := range []struct {
			name, stateDir, want string
		}{
			{"same state dir", l.AgentStateDir("rs1"), "held by another agent (pid "},
			{"other state dir", t.TempDir(), "an agent already runs here"},
		} {
			argv := append([]string{raftlbBin}, withFlag(args, "--state-dir", tc.stateDir)...)
			out, err := l.Exec(l.ctx, "rs1", argv...)
			if err == nil || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "another raftlb agent is running") {
				t.Errorf("%s: err %v, output %q; want a failure saying %q", tc.name, err, out, tc.want)
			}
		}
		out, err := l.Exec(l.ctx, "rs1", raftlbBin, "agent", "--cleanup", "--state-dir", l.AgentStateDir("rs1"))
		if err == nil || !strings.Contains(string(out), "held by another agent") {
			t.Errorf("agent --cleanup while the agent runs: err %v, output %q; want refused", err, out)
		}
	})

	// The client namespace stands in for another host: its address (192.0.2.100) is in
	// no agent certificate.
	tls := l.TLSDir()
	for _, tc := range []struct {
		name, cert, want string
	}{
		{"certificate of another realserver", "agent-rs2", `id "rs1" is not the certificate's`},
		{"addresses outside the certificate", "agent-rs1", `192.0.2.100 is not in the certificate's IP SANs`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv := withFlag(args, "--tls-cert", filepath.Join(tls, tc.cert+".pem"))
			argv = withFlag(argv, "--tls-key", filepath.Join(tls, tc.cert+"-key.pem"))
			argv = withFlag(argv, "--iface", lab.FrontIface)
			argv = withFlag(argv, "--state-dir", t.TempDir())
			p, err := l.Start("client", "impostor-"+tc.cert, append([]string{raftlbBin}, argv...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop(l.ctx)
			eventually(t, 15*time.Second, "the agent logs why it was refused", func() error {
				b, err := readFile(p.LogPath)
				if err != nil {
					return err
				}
				b = strings.ReplaceAll(b, `\"`, `"`) // slog quotes the error
				if !strings.Contains(b, tc.want) || !strings.Contains(b, "PermissionDenied") {
					return fmt.Errorf("log so far:\n%s", b)
				}
				return nil
			})
		})
	}

	t.Run("agent calls outside its own id", func(t *testing.T) {
		cc := l.agentConn(t, "rs1")
		client := raftlbv1.NewAgentServiceClient(cc)
		ctx := l.ctx
		_, err := client.ReportStatus(ctx, &raftlbv1.ReportStatusRequest{Id: "rs2", AppliedGeneration: 1 << 40})
		wantDenied(t, "ReportStatus for rs2 as rs1", err, `id "rs2" is not the certificate's`)
		_, err = client.ListAgents(ctx, &raftlbv1.ListAgentsRequest{})
		wantDenied(t, "ListAgents as an agent", err, "")
		stream, err := client.WatchConfig(ctx, &raftlbv1.WatchConfigRequest{Id: "rs2"})
		if err == nil {
			_, err = stream.Recv()
		}
		wantDenied(t, "WatchConfig for rs2 as rs1", err, `id "rs2" is not the certificate's`)
	})

	got, err := l.agents()
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range realservers {
		if diff := cmp.Diff(orig[rs].GetInterfaces(), got[rs].GetInterfaces(), protocmp.Transform()); diff != "" {
			t.Errorf("%s's registration changed (-before +after):\n%s", rs, diff)
		}
		if got[rs].GetAppliedGeneration() >= 1<<40 {
			t.Errorf("%s's status was overwritten: %v", rs, got[rs])
		}
	}
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// agentConn dials d1's API from the client namespace with realserver id's certificate.
func (l *testLab) agentConn(t *testing.T, id string) *grpc.ClientConn {
	t.Helper()
	tls := l.TLSDir()
	cfg, err := pki.ClientTLS(filepath.Join(tls, "ca.pem"), filepath.Join(tls, "agent-"+id+".pem"), filepath.Join(tls, "agent-"+id+"-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := lab.LookupHost("d1")
	dial := l.DialContext("client")
	cc, err := grpc.NewClient("passthrough:///"+netip.AddrPortFrom(d1.Front, lab.APIPort).String(),
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp4", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// wantDenied fails t unless err is PermissionDenied with a message containing msg.
func wantDenied(t *testing.T, what string, err error, msg string) {
	t.Helper()
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), msg) {
		t.Errorf("%s: %v; want PermissionDenied saying %q", what, err, msg)
	}
}
