package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// TUN packets that no longer fit the front MTU once encapsulated, and
// that no segmentation will cut down: with DF the client hears
// "fragmentation needed" from the VIP, as IPVS answers; without, they are
// dropped and counted. The test dataplane's front MTU is 1500.
func TestTUNFragNeeded(t *testing.T) {
	const frontMTU = 1500
	d := newTestDataplane(t, Config{})
	udp := Service{ServiceKey: ServiceKey{VIP: vip, Port: 53, Proto: UDP}, Realservers: reals(TUN, 53, 1)}
	mustApply(t, d, State{Services: []Service{service(MH, reals(TUN, 80, 1)), udp}})
	grantLease(t, d, vip)

	// tcp and udp are client frames to the VIP of the given IP total
	// length, with DF or without.
	tcp := func(totLen int, df bool) []byte {
		return pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoTCP, ID: 7, FragOff: dfBits(df)}.Packet(
				pkt.TCP{SrcPort: 40000, DstPort: 80, Seq: 1000, Ack: 2000, Flags: pkt.ACK, Payload: payload(totLen - 40)}.Segment(client, vip)))
	}
	udpDF := func(src netip.Addr, totLen int) []byte {
		return pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: src, Dst: vip, Proto: pkt.ProtoUDP, ID: 9, FragOff: dfBits(true)}.Packet(
				pkt.UDP(src, vip, 40001, 53, payload(totLen-28))))
	}
	// fragNeeded is the answer to frame: from the VIP to its sender, the
	// MTU left inside the tunnel, quoting the IP header and 8 bytes.
	fragNeeded := func(frame []byte) []byte {
		return pkt.Ether(clientMAC, frontMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoICMP, TOS: 0xc0, FragOff: 0x4000, TTL: 64}.Packet(
				pkt.ICMP(3, 4, frontMTU-20, frame[14:14+28])))
	}

	for _, tc := range []struct {
		name    string
		in      []byte
		verdict uint32
		reason  Reason
		want    []byte // the whole frame out, when there is one to compare
	}{
		{"tcp 1500 bytes, DF", tcp(1500, true), tcRedirect, ReasonTCTxFragNeeded, fragNeeded(tcp(1500, true))},
		{"tcp 1481 bytes, DF: one too many", tcp(1481, true), tcRedirect, ReasonTCTxFragNeeded, fragNeeded(tcp(1481, true))},
		{"udp 1500 bytes, DF", udpDF(client, 1500), tcRedirect, ReasonTCTxFragNeeded, fragNeeded(udpDF(client, 1500))},
		{"tcp 1500 bytes without DF", tcp(1500, false), tcShot, ReasonDropTooBig, nil},
		{"udp from a multicast source", udpDF(netip.MustParseAddr("224.0.0.5"), 1500), tcShot, ReasonDropTooBig, nil},
		{"tcp 1480 bytes, DF: fits", tcp(1480, true), tcRedirect, ReasonTCTxTUN,
			pkt.Ether(rsMAC(1), frontMAC, pkt.EtherIPv4,
				pkt.IPv4{Src: dirFront, Dst: rsFront(1), Proto: pkt.ProtoIPIP, FragOff: 0x4000}.Packet(tcp(1480, true)[14:]))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// XDP cannot tell a GSO packet from another: it leaves both to TC.
			if len(tc.in)-14+20 > frontMTU {
				if v, _ := run(t, d.objs.XdpFront, tc.in); v != xdpPass {
					t.Fatalf("xdp verdict %d, want pass", v)
				}
			}
			before := counter(t, d, tc.reason)
			v, out := run(t, d.objs.TcFront, tc.in)
			if v != tc.verdict {
				t.Fatalf("tc verdict %d, want %d", v, tc.verdict)
			}
			if got := counter(t, d, tc.reason); got != before+1 {
				t.Errorf("%s counter %d, want %d", tc.reason, got, before+1)
			}
			if tc.want == nil {
				return
			}
			if diff := cmp.Diff(tc.want, out); diff != "" {
				t.Errorf("frame (-want +got):\n%s", diff)
			}
			if err := pkt.Verify(out); err != nil {
				t.Error(err)
			}
			if tc.reason == ReasonTCTxFragNeeded {
				checkFragNeeded(t, tc.in, out, frontMTU-20)
			}
		})
	}

	// An ICMP error about the connection above, quoting a whole segment:
	// forwarded to the realserver it would not fit the tunnel, and no
	// error may answer an error.
	t.Run("icmp error too big to forward", func(t *testing.T) {
		quote := pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoTCP, FragOff: 0x4000}.Packet(
			pkt.TCP{SrcPort: 80, DstPort: 40000, Flags: pkt.ACK, Payload: payload(1420)}.Segment(vip, client))
		in := pkt.Ether(frontMAC, routerMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: netip.MustParseAddr("192.0.2.254"), Dst: vip, Proto: pkt.ProtoICMP, FragOff: 0x4000}.Packet(
				pkt.ICMP(3, 4, 1400, quote)))
		for _, p := range []struct {
			name string
			run  func() uint32
			want uint32
		}{
			{"xdp", func() uint32 { v, _ := run(t, d.objs.XdpFront, in); return v }, xdpDrop},
			{"tc", func() uint32 { v, _ := run(t, d.objs.TcFront, in); return v }, tcShot},
		} {
			before := counter(t, d, ReasonDropTooBig)
			if v := p.run(); v != p.want {
				t.Errorf("%s verdict %d, want %d", p.name, v, p.want)
			}
			if got := counter(t, d, ReasonDropTooBig); got != before+1 {
				t.Errorf("%s: %s counter %d, want %d", p.name, ReasonDropTooBig, got, before+1)
			}
		}
	})

	t.Run("no lease, no answer", func(t *testing.T) {
		if err := d.SetLease(vip, time.Time{}); err != nil {
			t.Fatal(err)
		}
		before := counter(t, d, ReasonDropNoLease)
		if v, _ := run(t, d.objs.TcFront, tcp(1500, true)); v != tcShot {
			t.Errorf("verdict %d, want shot", v)
		}
		if got := counter(t, d, ReasonDropNoLease); got != before+1 {
			t.Errorf("%s counter %d, want %d", ReasonDropNoLease, got, before+1)
		}
	})
}

// checkFragNeeded spells out, field by field, what the whole-frame
// comparison already covers, so that a failure names the field.
func checkFragNeeded(t *testing.T, in, out []byte, mtu uint16) {
	t.Helper()
	if len(out) != 14+20+8+28 {
		t.Fatalf("answer is %d bytes, want %d", len(out), 14+20+8+28)
	}
	if !bytes.Equal(out[0:6], in[6:12]) || !bytes.Equal(out[6:12], in[0:6]) {
		t.Errorf("ethernet %x→%x, want the request's addresses swapped", out[6:12], out[0:6])
	}
	ip := out[14:]
	if src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])); src != vip || dst != client {
		t.Errorf("IP %s→%s, want %s→%s", src, dst, vip, client)
	}
	if ip[9] != pkt.ProtoICMP || ip[8] != 64 {
		t.Errorf("IP protocol %d TTL %d, want ICMP and 64", ip[9], ip[8])
	}
	icmp := ip[20:]
	if icmp[0] != 3 || icmp[1] != 4 {
		t.Errorf("ICMP type %d code %d, want 3/4", icmp[0], icmp[1])
	}
	if got := be16At(icmp, 6); got != mtu {
		t.Errorf("next-hop MTU %d, want %d", got, mtu)
	}
	if diff := cmp.Diff(in[14:14+28], icmp[8:]); diff != "" {
		t.Errorf("quote (-want +got):\n%s", diff)
	}
}

func dfBits(df bool) uint16 {
	if df {
		return 0x4000
	}
	return 0
}

func payload(n int) []byte {
	return bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
}

// TestE2ETUNPathMTU: a client that sends a datagram which fits its own
// link but not the tunnel, with DF, hears "fragmentation needed" from the
// VIP and learns the path MTU its kernel must use from then on: 1480, the
// front MTU less the outer header. Both with the client's checksums
// offloaded (the director gets a partial checksum, and the switch port
// towards the client fills in whatever is left partial) and without.
func TestE2ETUNPathMTU(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	e := setupE2E(t)
	for _, offload := range []string{"on", "off"} {
		t.Run("client-tx-csum-"+offload, func(t *testing.T) {
			e.lab.Exec("c", "ethtool", "-K", "eth0", "tx", offload)
			// Forget what an earlier run learned.
			e.lab.IP("c", "route", "flush", "cache")
			before := counter(t, e.d, ReasonTCTxFragNeeded)
			err := e.lab.Do("c", func() error { return learnPathMTU(e2eTUN, 53) })
			if err != nil {
				t.Fatal(err)
			}
			if got := counter(t, e.d, ReasonTCTxFragNeeded); got <= before {
				t.Errorf("%s counter %d, want more than %d", ReasonTCTxFragNeeded, got, before)
			}
		})
	}
	if out := e.lab.IP("c", "route", "get", e2eTUN.String()); !strings.Contains(out, "mtu 1480") {
		t.Errorf("client route to %s: %q, want mtu 1480", e2eTUN, out)
	}
}

// learnPathMTU sends a 1472-byte datagram (1500 bytes of IP) with DF to
// vip:port and waits for the error that "fragmentation needed" raises on
// the socket; then the path MTU must be 1480: the socket says so, the
// same datagram is refused locally and one that fits is sent.
func learnPathMTU(vip netip.Addr, port uint16) error {
	c, err := net.Dial("udp4", netip.AddrPortFrom(vip, port).String())
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	sockopt := func(set bool, opt, val int) (int, error) {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if set {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, opt, val)
			} else {
				val, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, opt)
			}
		})
		return val, errors.Join(err, serr)
	}
	if _, err := sockopt(true, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DO); err != nil {
		return fmt.Errorf("set IP_MTU_DISCOVER: %w", err)
	}
	if mtu, err := sockopt(false, syscall.IP_MTU, 0); err != nil || mtu != 1500 {
		return fmt.Errorf("path MTU %d before (%v), want the link's 1500", mtu, err)
	}
	if _, err := c.Write(payload(1472)); err != nil {
		return fmt.Errorf("first datagram: %w", err)
	}
	// The ICMP error is reported to the connected socket: a read returns it.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 64)); !errors.Is(err, syscall.EMSGSIZE) {
		return fmt.Errorf("read after the datagram: %v, want EMSGSIZE", err)
	}
	if mtu, err := sockopt(false, syscall.IP_MTU, 0); err != nil || mtu != 1480 {
		return fmt.Errorf("path MTU %d (%v), want 1480", mtu, err)
	}
	if _, err := c.Write(payload(1472)); !errors.Is(err, syscall.EMSGSIZE) {
		return fmt.Errorf("second 1472-byte datagram: %v, want EMSGSIZE", err)
	}
	if _, err := c.Write(payload(1452)); err != nil {
		return fmt.Errorf("1452-byte datagram: %w", err)
	}
	return nil
}
