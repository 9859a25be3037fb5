package failover

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/raftlb/raftlb/deploy/lab"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// raftlbBin is the binary under test, built once by TestMain.
var raftlbBin string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // every test skips, saying why
	}
	dir, err := os.MkdirTemp("", "raftlb-failover-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	raftlbBin = filepath.Join(dir, "raftlb")
	out, err := exec.Command("go", "build", "-o", raftlbBin, "github.com/raftlb/raftlb/cmd/raftlb").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build raftlb: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// The services the tests create, all on the lab backend's echo port, each with every
// realserver (DR and TUN by their front addresses, NAT by their inside ones).
const (
	vipDR  = "198.51.100.10"
	vipTUN = "198.51.100.20"
	vipNAT = "198.51.100.30"
	// vipRR is a DR service with the rr scheduler: a connection survives a failover
	// only if its entry was replicated (Maglev would pick the same realserver anyway).
	vipRR = "198.51.100.40"
)

var (
	allVIPs     = []string{vipDR, vipTUN, vipNAT, vipRR}
	realservers = []string{"rs1", "rs2", "rs3"}
)

// haLab is the lab the tests share.
type haLab struct {
	*lab.Lab
	tb  testing.TB
	ctx context.Context
	// flags are the extra flags of every director and the witness, also on restart.
	flags []string
}

// upLab brings up directors (with the extra flags), witness, backends and agents
// under prefix, creates the services with add and waits until every VIP in vips
// echoes through d1, their preferred owner.
func upLab(tb testing.TB, prefix string, flags []string, add func(*haLab), vips ...string) *haLab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: the lab creates network namespaces")
	}
	log := slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	l, err := lab.New(prefix, tb.TempDir(), log)
	if err != nil {
		tb.Fatal(err)
	}
	l.StopTimeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	hl := &haLab{Lab: l, tb: tb, ctx: ctx, flags: flags}
	tb.Cleanup(func() {
		cancel()
		if tb.Failed() {
			hl.dumpLogs()
		}
		if err := l.Down(context.Background()); err != nil {
			tb.Errorf("lab down: %v", err)
		}
	})
	if err := l.Up(ctx, lab.UpOptions{Binary: raftlbBin, StartDirectors: true, StartBackends: true, StartAgents: true,
		DirectorFlags: flags}); err != nil {
		tb.Fatalf("lab up: %v", err)
	}
	add(hl)
	for _, vip := range vips {
		eventually(tb, 60*time.Second, "echo through "+vip, func() error { return hl.echoOnce(vip, 2*time.Second) })
	}
	hl.waitOwners("d1", vips...)
	return hl
}

func (l *haLab) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "logs", "*.log"))
	for _, p := range logs {
		b, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		lines = lines[max(0, len(lines)-40):]
		l.tb.Logf("--- %s:\n%s", filepath.Base(p), strings.Join(lines, "\n"))
	}
}

// addServices declares the NAT gateway and the four test services, all preferring d1.
func (l *haLab) addServices() {
	l.tb.Helper()
	l.declareGateway()
	for _, svc := range []echoService{
		{vipDR, "tcp", "dr", "mh"}, {vipTUN, "tcp", "tun", "mh"}, {vipNAT, "tcp", "nat", "mh"}, {vipRR, "tcp", "dr", "rr"},
	} {
		l.addService(svc)
	}
}

// declareGateway declares the NAT gateway, owned by d1. It is retried until d1 has
// announced itself: a preferred owner must be a known director.
func (l *haLab) declareGateway() {
	l.tb.Helper()
	eventually(l.tb, 30*time.Second, "declare the NAT gateway", func() error {
		_, err := l.cli("address", "set", "--address", lab.Gateway.String(), "--kind", "nat-gateway", "--owner", "d1")
		return err
	})
}

// echoService is a service on the backend's echo port with every realserver.
type echoService struct{ vip, proto, method, sched string }

func (l *haLab) addService(svc echoService) {
	l.tb.Helper()
	port := fmt.Sprint(lab.BackendEchoPort)
	l.mustCLI("service", "add", "--vip", svc.vip, "--port", port, "--proto", svc.proto, "--scheduler", svc.sched, "--owner", "d1")
	for _, name := range realservers {
		h, err := lab.LookupHost(name)
		if err != nil {
			l.tb.Fatal(err)
		}
		addr := h.Front
		if svc.method == "nat" {
			addr = h.Inside
		}
		l.mustCLI("realserver", "add", "--vip", svc.vip, "--port", port, "--proto", svc.proto,
			"--address", addr.String(), "--method", svc.method)
	}
}

// cli runs the CLI from the client namespace as admin against the witness, which no
// test stops.
func (l *haLab) cli(args ...string) ([]byte, error) {
	return l.cliOn("w1", args...)
}

func (l *haLab) cliOn(host string, args ...string) ([]byte, error) {
	return l.CLI(l.ctx, raftlbBin, host, append(args, "--timeout", "10s")...)
}

func (l *haLab) mustCLI(args ...string) string {
	l.tb.Helper()
	out, err := l.cli(args...)
	if err != nil {
		l.tb.Fatalf("raftlb %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// getJSON runs a read verb against host with -o json and decodes it into m.
func (l *haLab) getJSON(host string, m proto.Message, args ...string) error {
	out, err := l.cliOn(host, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(out, m); err != nil {
		return fmt.Errorf("decode %s: %w: %q", strings.Join(args, " "), err, out)
	}
	return nil
}

// addresses returns the announced addresses as host sees them, by address.
func (l *haLab) addresses(host string) (map[string]*raftlbv1.Address, error) {
	var r raftlbv1.ListAddressesResponse
	if err := l.getJSON(host, &r, "vip", "list"); err != nil {
		return nil, err
	}
	out := make(map[string]*raftlbv1.Address)
	for _, a := range r.GetAddresses() {
		out[a.GetAddress()] = a
	}
	return out, nil
}

// waitOwners waits until the witness sees owner own every address in vips and hold a
// lease on it (the witness sees leases only while it leads: then it checks the lease).
func (l *haLab) waitOwners(owner string, vips ...string) {
	l.tb.Helper()
	eventually(l.tb, 20*time.Second, owner+" owns "+strings.Join(vips, ", "), func() error {
		as, err := l.addresses("w1")
		if err != nil {
			return err
		}
		for _, v := range vips {
			if a := as[v]; a.GetOwner() != owner {
				return fmt.Errorf("%s is owned by %q", v, a.GetOwner())
			}
		}
		return nil
	})
}

// owners maps each address to its owner, as the witness sees it.
func (l *haLab) owners() map[string]string {
	l.tb.Helper()
	as, err := l.addresses("w1")
	if err != nil {
		l.tb.Fatalf("vip list: %v", err)
	}
	out := make(map[string]string)
	for k, a := range as {
		out[k] = a.GetOwner() + "@" + fmt.Sprint(a.GetEpoch())
	}
	return out
}

// macOf is the front MAC of director id, the MAC it answers ARP for VIPs with.
func macOf(tb testing.TB, id string) string {
	h, err := lab.LookupHost(id)
	if err != nil {
		tb.Fatal(err)
	}
	return lab.MAC(h.Front)
}

// clientNeigh returns the MAC the client's neighbour table holds for vip ("" if none).
func (l *haLab) clientNeigh(vip string) (string, error) {
	out, err := exec.CommandContext(l.ctx, "ip", "-n", l.NS("client"), "neigh", "show", vip).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip neigh show %s: %w: %s", vip, err, out)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1], nil
		}
	}
	return "", nil
}

// waitClientNeigh waits until the client's ARP entry for every vip is mac. An entry
// that is only stale is refreshed by a connection attempt.
func (l *haLab) waitClientNeigh(mac string, vips ...string) {
	l.tb.Helper()
	for _, vip := range vips {
		eventually(l.tb, 15*time.Second, "client ARP entry for "+vip+" is "+mac, func() error {
			got, err := l.clientNeigh(vip)
			if err != nil {
				return err
			}
			if got != mac {
				_ = l.echoOnce(vip, 300*time.Millisecond)
				return fmt.Errorf("client has %s at %q", vip, got)
			}
			return nil
		})
	}
}

// signal sends sig to the recorded process name.
func (l *haLab) signal(name string, sig syscall.Signal) {
	l.tb.Helper()
	if err := l.Signal(name, sig); err != nil {
		l.tb.Fatalf("signal %s %v: %v", name, sig, err)
	}
}

// waitGone waits until the recorded process name no longer runs.
func (l *haLab) waitGone(name string) {
	l.tb.Helper()
	ctx, cancel := context.WithTimeout(l.ctx, 15*time.Second)
	defer cancel()
	if err := l.WaitExited(ctx, name); err != nil {
		l.tb.Fatal(err)
	}
}

// restart starts director id again with its data directory and waits until it has
// caught up with the cluster: it serves its API and has applied what the witness has
// committed.
func (l *haLab) restart(id string) {
	l.tb.Helper()
	p, err := l.StartDirector(raftlbBin, id, l.flags...)
	if err != nil {
		l.tb.Fatal(err)
	}
	h, _ := lab.LookupHost(id)
	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()
	if err := l.WaitTCP(ctx, "client", netip.AddrPortFrom(h.Front, lab.APIPort).String(), p); err != nil {
		l.tb.Fatal(err)
	}
	var w raftlbv1.GetStatusResponse
	if err := l.getJSON("w1", &w, "status"); err != nil {
		l.tb.Fatal(err)
	}
	eventually(l.tb, 30*time.Second, id+" catches up", func() error {
		var s raftlbv1.GetStatusResponse
		if err := l.getJSON(id, &s, "status"); err != nil {
			return err
		}
		if s.GetLeaderId() == "" || s.GetAppliedIndex() < w.GetCommitIndex() {
			return fmt.Errorf("%s applied %d of %d (leader %q)", id, s.GetAppliedIndex(), w.GetCommitIndex(), s.GetLeaderId())
		}
		return nil
	})
}

// connections returns director host's entries for vip, at most limit of them (the
// API's default if 0).
func (l *haLab) connections(host, vip string, limit int) ([]*raftlbv1.Connection, error) {
	var r raftlbv1.ListConnectionsResponse
	if err := l.getJSON(host, &r, "conns", "list", "--vip", vip, "--limit", fmt.Sprint(limit)); err != nil {
		return nil, err
	}
	return r.GetConnections(), nil
}

// waitReplicated waits until director host's table holds every stream's connection,
// with the realserver the stream uses: then the streams are older than one sync batch.
func (l *haLab) waitReplicated(host string, streams []*echoStream) {
	l.tb.Helper()
	eventually(l.tb, 15*time.Second, host+" holds every stream's connection", func() error {
		byVIP := make(map[string][]*raftlbv1.Connection)
		for _, s := range streams {
			if _, ok := byVIP[s.vip]; ok {
				continue
			}
			cs, err := l.connections(host, s.vip, 0)
			if err != nil {
				return err
			}
			byVIP[s.vip] = cs
		}
		for _, s := range streams {
			found := false
			for _, c := range byVIP[s.vip] {
				if c.GetClientPort() == uint32(s.localPort()) {
					found = true
				}
			}
			if !found {
				var ports []uint32
				for _, c := range byVIP[s.vip] {
					ports = append(ports, c.GetClientPort())
				}
				return fmt.Errorf("no entry for the stream from port %d to %s (entries from %v)", s.localPort(), s.vip, ports)
			}
		}
		return nil
	})
}

// eventually polls f until it succeeds or timeout passes.
func eventually(tb testing.TB, timeout time.Duration, what string, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval under a deadline
	}
}
