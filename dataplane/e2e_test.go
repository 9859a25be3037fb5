package dataplane

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raftlb/raftlb/dataplane/internal/netnslab"
)

var (
	e2eDR  = netip.MustParseAddr("198.51.100.1")
	e2eTUN = netip.MustParseAddr("198.51.100.2")
	e2eNAT = netip.MustParseAddr("198.51.100.3")
)

type e2e struct {
	lab  *netnslab.Lab
	d    *Dataplane
	stop func()
}

func (e *e2e) reasons(t *testing.T) map[Reason]uint64 {
	t.Helper()
	st, err := e.d.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	return st.Reasons
}

// backend answers every connection with its name and then echoes, on
// :80 (DR and TUN, addressed to the VIP) and :8080 (NAT).
func backend(t *testing.T, lab *netnslab.Lab, name string) {
	for _, port := range []string{":80", ":8080"} {
		var ln net.Listener
		err := lab.Do(name, func() (err error) {
			ln, err = net.Listen("tcp4", port)
			return err
		})
		if err != nil {
			t.Fatalf("listen in %s: %v", name, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					fmt.Fprintf(c, "%s\n", name)
					io.Copy(c, c)
				}()
			}
		}()
	}
}

func setupE2E(t *testing.T) *e2e {
	needRoot(t)
	for _, tool := range []string{"ip", "ethtool", "arping", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("end-to-end test needs %s: %v", tool, err)
		}
	}
	lab := netnslab.New(t, fmt.Sprintf("rlbdp%d", os.Getpid()%100000))
	lab.Host("c", "192.0.2.100/24", "")
	lab.IP("c", "route", "add", "198.51.100.0/24", "dev", "eth0")
	lab.Host("d", "192.0.2.1/24", "203.0.113.1/24")
	for i := 1; i <= 3; i++ {
		rs := fmt.Sprintf("r%d", i)
		lab.Host(rs, fmt.Sprintf("192.0.2.1%d/24", i), fmt.Sprintf("203.0.113.1%d/24", i))
		for _, v := range []netip.Addr{e2eDR, e2eTUN} {
			lab.IP(rs, "addr", "add", v.String()+"/32", "dev", "lo")
		}
		for _, ifc := range []string{"all", "eth0", "eth1"} {
			lab.Sysctl(rs, "net.ipv4.conf."+ifc+".arp_ignore", "1")
			lab.Sysctl(rs, "net.ipv4.conf."+ifc+".arp_announce", "2")
			lab.Sysctl(rs, "net.ipv4.conf."+ifc+".rp_filter", "0")
		}
		// TUN costs 20 bytes: advertise an MSS that leaves room for it.
		lab.IP(rs, "route", "replace", "192.0.2.0/24", "dev", "eth0", "src", fmt.Sprintf("192.0.2.1%d", i), "advmss", "1440")
		// NAT replies leave through the gateway the director answers for.
		lab.IP(rs, "rule", "add", "from", fmt.Sprintf("203.0.113.1%d", i), "table", "100")
		lab.IP(rs, "route", "add", "default", "via", "203.0.113.254", "dev", "eth1", "table", "100")
		if err := lab.Do(rs, func() error { _, err := InstallDecap("eth0"); return err }); err != nil {
			t.Fatalf("install decap: %v", err)
		}
		// Switch ports towards realservers compute checksums in software,
		// so a wrong partial checksum would show as TcpInCsumErrors.
		for _, dev := range []string{"eth0", "eth1"} {
			lab.Exec("sw", "ethtool", "-K", lab.SwitchPort(rs, dev), "tx", "off")
		}
		backend(t, lab, rs)
	}
	lab.Exec("sw", "ethtool", "-K", lab.SwitchPort("c", "eth0"), "tx", "off")

	var d *Dataplane
	err := lab.Do("d", func() (err error) {
		d, err = Open(Config{
			FrontIface:    "eth0",
			InsideIface:   "eth1",
			SweepInterval: 200 * time.Millisecond,
			NeighInterval: 100 * time.Millisecond,
			Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		return err
	})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, func([]Event) {}) }()
	e := &e2e{lab: lab, d: d}
	e.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		d.Close()
	})
	t.Cleanup(e.stop)
	e.apply(t, 3)
	for _, a := range []netip.Addr{e2eDR, e2eTUN, e2eNAT, gateway} {
		if err := d.SetLease(a, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(d.Unresolved()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("next hops unresolved: %v", d.Unresolved())
		}
		time.Sleep(20 * time.Millisecond) // polling the neighbour refresher
	}
	return e
}

// apply configures the three services over realservers 1..n.
func (e *e2e) apply(t *testing.T, n int, drop ...int) {
	t.Helper()
	var dr, tun, nat []Realserver
	for i := 1; i <= n; i++ {
		if contains(drop, i) {
			continue
		}
		dr = append(dr, Realserver{Addr: rsFront(i), Port: 80, Weight: 1, Method: DR})
		tun = append(tun, Realserver{Addr: rsFront(i), Port: 80, Weight: 1, Method: TUN})
		nat = append(nat, Realserver{Addr: rsInside(i), Port: 8080, Weight: 1, Method: NAT})
	}
	svc := func(v netip.Addr, rs []Realserver) Service {
		return Service{ServiceKey: ServiceKey{VIP: v, Port: 80, Proto: TCP}, Realservers: rs}
	}
	// Nothing listens on 5353: realservers answer with port unreachable.
	var natUDP []Realserver
	for _, rs := range nat {
		natUDP = append(natUDP, Realserver{Addr: rs.Addr, Port: 5353, Weight: 1, Method: NAT})
	}
	// UDP over TUN, for path-MTU discovery through the tunnel.
	var tunUDP []Realserver
	for _, rs := range tun {
		tunUDP = append(tunUDP, Realserver{Addr: rs.Addr, Port: 53, Weight: 1, Method: TUN})
	}
	mustApply(t, e.d, State{
		Services: []Service{svc(e2eDR, dr), svc(e2eTUN, tun), svc(e2eNAT, nat),
			{ServiceKey: ServiceKey{VIP: e2eNAT, Port: 53, Proto: UDP}, Realservers: natUDP},
			{ServiceKey: ServiceKey{VIP: e2eTUN, Port: 53, Proto: UDP}, Realservers: tunUDP}},
		Gateways: []netip.Addr{gateway},
	})
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// dial connects from the client namespace, optionally from a fixed port,
// and returns the connection and the name of the realserver behind it.
func (e *e2e) dial(vip netip.Addr, port int) (net.Conn, string, error) {
	var c net.Conn
	err := e.lab.Do("c", func() error {
		dl := net.Dialer{Timeout: 3 * time.Second}
		if port != 0 {
			dl.LocalAddr = &net.TCPAddr{IP: net.IP(client.AsSlice()), Port: port}
		}
		var err error
		c, err = dl.Dial("tcp4", netip.AddrPortFrom(vip, 80).String())
		return err
	})
	if err != nil {
		return nil, "", err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	name, err := bufio.NewReader(io.LimitReader(c, 4)).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("read realserver name: %w", err)
	}
	return c, strings.TrimSpace(name), nil
}

func echo(c net.Conn, size int) error {
	msg := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		errc <- err
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs")
	}
	return nil
}

func (e *e2e) csumErrors(t *testing.T, ns string) int {
	t.Helper()
	out := e.lab.Exec(ns, "cat", "/proc/net/snmp")
	var hdr []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if hdr == nil {
			hdr = f
			continue
		}
		for i, h := range hdr {
			if h == "InCsumErrors" && i < len(f) {
				n, _ := strconv.Atoi(f[i])
				return n
			}
		}
	}
	t.Fatalf("no Tcp InCsumErrors in %s", ns)
	return 0
}

func (e *e2e) arping(vip netip.Addr) bool {
	err := exec.Command("ip", "netns", "exec", e.lab.NS("c"), "arping", "-q", "-c", "1", "-w", "1", "-I", "eth0", vip.String()).Run()
	return err == nil
}

func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	e := setupE2E(t)

	for _, offload := range []string{"on", "off"} {
		e.lab.Exec("c", "ethtool", "-K", "eth0", "tx", offload)
		for _, m := range []struct {
			name string
			vip  netip.Addr
		}{{"dr", e2eDR}, {"tun", e2eTUN}, {"nat", e2eNAT}} {
			t.Run(fmt.Sprintf("%s/client-tx-csum-%s", m.name, offload), func(t *testing.T) {
				before := e.reasons(t)
				c, name, err := e.dial(m.vip, 0)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				if !strings.HasPrefix(name, "r") {
					t.Fatalf("realserver name %q", name)
				}
				for _, size := range []int{5, 1 << 20} {
					if err := echo(c, size); err != nil {
						t.Fatalf("echo %d bytes via %s: %v", size, name, err)
					}
				}
				// Generic XDP keeps metadata: TC took XDP's pick for every
				// packet XDP passed on, and searched the table for none.
				after := e.reasons(t)
				delta := func(r Reason) uint64 { return after[r] - before[r] }
				passed := delta(ReasonXDPPassNAT) + delta(ReasonXDPPassOversize)
				if delta(ReasonTCXDPPick) != passed || (m.vip == e2eNAT && passed == 0) {
					t.Errorf("tc_xdp_pick %d, packets XDP passed on (xdp_pass_nat, xdp_pass_oversize) %d",
						delta(ReasonTCXDPPick), passed)
				}
			})
		}
	}
	t.Run("icmp echo", func(t *testing.T) {
		e.lab.Exec("c", "ping", "-c", "1", "-W", "2", e2eDR.String())
	})
	t.Run("nat port unreachable reaches the client", func(t *testing.T) {
		// The client's kernel matches the error to its socket by the
		// quoted header, so this needs VIP:53 quoted and good checksums.
		err := e.lab.Do("c", func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(e2eNAT, 53).String())
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 16)
			for i := 0; i < 3; i++ {
				if _, err := c.Write([]byte("query")); err != nil {
					return err
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				if _, err = c.Read(buf); errors.Is(err, syscall.ECONNREFUSED) {
					return nil
				}
			}
			return errors.New("no port unreachable")
		})
		if err != nil {
			t.Error(err)
		}
	})
	t.Run("checksums", func(t *testing.T) {
		for _, ns := range []string{"c", "r1", "r2", "r3"} {
			if n := e.csumErrors(t, ns); n != 0 {
				t.Errorf("%s: TcpInCsumErrors %d", ns, n)
			}
		}
	})
	t.Run("maglev distribution", func(t *testing.T) { e.distribution(t) })
	t.Run("long connection survives changes", func(t *testing.T) { e.longConnection(t) })
	t.Run("silent after lease and close", func(t *testing.T) {
		if !e.arping(e2eDR) {
			t.Fatal("VIP does not answer ARP while leased")
		}
		if err := e.d.SetLease(e2eDR, time.Now()); err != nil {
			t.Fatal(err)
		}
		if e.arping(e2eDR) {
			t.Error("VIP answers ARP after its lease passed")
		}
		if !e.arping(e2eTUN) {
			t.Fatal("other VIP stopped answering")
		}
		e.stop()
		if e.arping(e2eTUN) {
			t.Error("VIP answers ARP after the dataplane closed")
		}
	})
}

// 10,000 connections from fixed client ports spread like the Maglev table.
func (e *e2e) distribution(t *testing.T) {
	const n = 10000
	const workers = 8
	start := time.Now()
	var mu sync.Mutex
	got := map[string]int{}
	var failures []string
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if time.Since(start) > 90*time.Second {
					mu.Lock()
					failures = append(failures, "time limit")
					mu.Unlock()
					return
				}
				c, name, err := e.dial(e2eDR, 20000+i)
				if err == nil {
					// Reset instead of TIME_WAIT.
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}
				mu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					got[name]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d connections in %v: %v", n, time.Since(start).Round(time.Millisecond), got)
	if len(failures) > 0 {
		t.Fatalf("%d failures, first: %s", len(failures), failures[0])
	}
	e.d.mu.Lock()
	si := e.d.st.svcs[ServiceKey{VIP: e2eDR, Port: 80, Proto: TCP}]
	share := map[string]float64{}
	predicted := map[string]int{}
	for _, idx := range si.table {
		share[e.d.st.realByIdx[idx].rs.Addr.String()] += 1 / float64(len(si.table))
	}
	for i := range n {
		k := connKeyToWire(ConnKey{Proto: TCP, Client: netip.AddrPortFrom(client, uint16(20000+i)), VIP: netip.AddrPortFrom(e2eDR, 80)})
		predicted[e.d.st.realByIdx[si.table[mhSlot(k, uint32(len(si.table)))]].rs.Addr.String()]++
	}
	e.d.mu.Unlock()
	for i := 1; i <= 3; i++ {
		name, addr := fmt.Sprintf("r%d", i), rsFront(i).String()
		frac := float64(got[name]) / n
		if math.Abs(frac-share[addr]) > 0.01 {
			t.Errorf("%s: %.2f%% of connections, table share %.2f%%", name, 100*frac, 100*share[addr])
		}
		if got[name] != predicted[addr] {
			t.Errorf("%s: %d connections, the hash predicts %d", name, got[name], predicted[addr])
		}
	}
}

func (e *e2e) longConnection(t *testing.T) {
	c, name, err := e.dial(e2eDR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	home, _ := strconv.Atoi(strings.TrimPrefix(name, "r"))
	other := home%3 + 1
	for _, step := range []struct {
		what string
		drop []int
	}{
		{"remove another realserver", []int{other}},
		{"add it back", nil},
		{"drain-like shrink to own realserver", []int{other, other%3 + 1}},
		{"all back", nil},
	} {
		if contains(step.drop, home) {
			t.Fatalf("test bug: dropping the connection's own realserver")
		}
		e.apply(t, 3, step.drop...)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := echo(c, 4096); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
	}
	// A reset would have shown as an echo error; the same socket is still
	// served by the same realserver.
	if err := c.(*net.TCPConn).SetKeepAlive(true); err != nil && !errors.Is(err, syscall.EINVAL) {
		t.Fatal(err)
	}
}

// TestE2ETunProbe: the director's own socket to a TUN VIP, marked and
// policy-routed to a realserver as the health prober does, reaches it
// encapsulated by the front interface's egress program (echoing bulk data
// with checksums intact), and gets its answer straight from the VIP. With
// the realserver's decapsulation gone, the probe fails, although the VIP is
// still on its lo: an unencapsulated probe would have reached it.
func TestE2ETunProbe(t *testing.T) {
	e := setupE2E(t)
	const mark, table = 0x52420001, "43001"
	e.lab.IP("d", "rule", "add", "fwmark", fmt.Sprint(mark), "table", table)
	e.lab.IP("d", "route", "add", "default", "via", rsFront(1).String(), "dev", "eth0", "onlink", "mtu", "1480", "table", table)
	if err := e.d.SetTunProbe(mark, rsFront(1)); err != nil {
		t.Fatal(err)
	}
	probe := func() (string, error) {
		var c net.Conn
		err := e.lab.Do("d", func() error {
			dl := net.Dialer{Timeout: time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, mark)
				}); err != nil {
					return err
				}
				return serr
			}}
			var err error
			c, err = dl.Dial("tcp4", netip.AddrPortFrom(e2eTUN, 80).String())
			return err
		})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		name, err := bufio.NewReader(io.LimitReader(c, 4)).ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("read realserver name: %w", err)
		}
		if err := echo(c, 64<<10); err != nil {
			return "", err
		}
		return strings.TrimSpace(name), nil
	}
	before := counter(t, e.d, ReasonTCTxTUNProbe)
	name, err := probe()
	if err != nil || name != "r1" {
		t.Fatalf("marked probe: answered by %q (%v), want r1", name, err)
	}
	if got := counter(t, e.d, ReasonTCTxTUNProbe); got <= before {
		t.Errorf("tc_tx_tun_probe %d, want more than %d", got, before)
	}
	if n := e.csumErrors(t, "r1"); n != 0 {
		t.Errorf("r1: TcpInCsumErrors %d", n)
	}
	if err := e.lab.Do("r1", func() error { return RemoveDecap("eth0", false) }); err != nil {
		t.Fatalf("remove decap: %v", err)
	}
	if name, err := probe(); err == nil {
		t.Fatalf("marked probe without decapsulation answered by %q", name)
	}
}
