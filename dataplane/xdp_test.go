package dataplane

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

func TestARP(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 2))}, Gateways: []netip.Addr{gateway}})
	grantLease(t, d, vip, gateway)
	bcast := pkt.MAC("ff:ff:ff:ff:ff:ff")
	zero := pkt.MAC("00:00:00:00:00:00")
	stranger := netip.MustParseAddr("198.51.100.99")

	for _, tc := range []struct {
		name    string
		inside  bool
		in      []byte
		verdict uint32
		want    []byte
	}{
		{
			name:    "vip on front",
			in:      pkt.ARP(1, bcast, clientMAC, client, zero, vip),
			verdict: xdpTX,
			want:    pkt.ARP(2, clientMAC, frontMAC, vip, clientMAC, client),
		},
		{
			name:    "gateway on inside",
			inside:  true,
			in:      pkt.ARP(1, bcast, rsMAC(1), rsInside(1), zero, gateway),
			verdict: xdpTX,
			want:    pkt.ARP(2, rsMAC(1), insideMAC, gateway, rsMAC(1), rsInside(1)),
		},
		{name: "gateway not on front", in: pkt.ARP(1, bcast, clientMAC, client, zero, gateway), verdict: xdpPass},
		{name: "vip not on inside", inside: true, in: pkt.ARP(1, bcast, clientMAC, client, zero, vip), verdict: xdpPass},
		{name: "not owned", in: pkt.ARP(1, bcast, clientMAC, client, zero, stranger), verdict: xdpPass},
		{name: "reply ignored", in: pkt.ARP(2, frontMAC, clientMAC, client, frontMAC, vip), verdict: xdpPass},
		{name: "gratuitous ignored", in: pkt.ARP(1, bcast, clientMAC, vip, zero, vip), verdict: xdpPass},
		{name: "truncated", in: pkt.ARP(1, bcast, clientMAC, client, zero, vip)[:30], verdict: xdpPass},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := d.objs.XdpFront
			if tc.inside {
				p = d.objs.XdpInside
			}
			verdict, out := run(t, p, tc.in)
			if verdict != tc.verdict {
				t.Fatalf("verdict %d, want %d", verdict, tc.verdict)
			}
			if tc.want != nil {
				if diff := cmp.Diff(tc.want, out); diff != "" {
					t.Errorf("reply (-want +got):\n%s", diff)
				}
			}
		})
	}

	// The lease gates the answer: past the deadline the VIP falls silent.
	req := pkt.ARP(1, bcast, clientMAC, client, zero, vip)
	if err := d.SetLease(vip, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, _ := run(t, d.objs.XdpFront, req); v != xdpPass {
		t.Errorf("expired lease: verdict %d, want pass", v)
	}
	if err := d.SetLease(vip, time.Now().Add(200*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if v, _ := run(t, d.objs.XdpFront, req); v != xdpTX {
		t.Errorf("renewed lease: verdict %d, want tx", v)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, _ := run(t, d.objs.XdpFront, req)
		if v == xdpPass {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still answering 5 s after the lease deadline")
		}
		time.Sleep(10 * time.Millisecond) // polling the deadline, not settling
	}
}

func TestDR(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 1))}})
	grantLease(t, d, vip)
	in := tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)
	verdict, out := run(t, d.objs.XdpFront, in)
	if verdict != xdpTX {
		t.Fatalf("verdict %d, want tx", verdict)
	}
	want := append(append(append([]byte{}, rsMAC(1)...), frontMAC...), in[12:]...)
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("frame (-want +got):\n%s", diff)
	}
	if err := pkt.Verify(out); err != nil {
		t.Error(err)
	}
}

func TestTUN(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(TUN, 80, 1))}})
	grantLease(t, d, vip)
	in := tcpFrame(client, 40000, vip, 80, pkt.SYN|pkt.ACK, []byte("hello"))
	verdict, out := run(t, d.objs.XdpFront, in)
	if verdict != xdpTX {
		t.Fatalf("verdict %d, want tx", verdict)
	}
	want := pkt.Ether(rsMAC(1), frontMAC, pkt.EtherIPv4,
		pkt.IPv4{Src: dirFront, Dst: rsFront(1), Proto: pkt.ProtoIPIP, FragOff: 0x4000}.Packet(in[14:]))
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("frame (-want +got):\n%s", diff)
	}
	if err := pkt.Verify(out); err != nil {
		t.Error(err)
	}
}

func TestNAT(t *testing.T) {
	d := newTestDataplane(t, Config{})
	tcp := service(MH, reals(NAT, 8080, 1))
	udp := Service{ServiceKey: ServiceKey{VIP: vip, Port: 53, Proto: UDP}, Realservers: reals(NAT, 5353, 1)}
	mustApply(t, d, State{Services: []Service{tcp, udp}, Gateways: []netip.Addr{gateway}})
	grantLease(t, d, vip, gateway)

	rsTCP := func(flags uint8, payload []byte) []byte {
		return pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
			pkt.IPv4{Src: rsInside(1), Dst: client, Proto: pkt.ProtoTCP, ID: 7, FragOff: 0x4000}.Packet(
				pkt.TCP{SrcPort: 8080, DstPort: 40000, Seq: 1000, Ack: 2000, Flags: flags, Payload: payload}.Segment(rsInside(1), client)))
	}
	for _, tc := range []struct {
		name        string
		in          []byte
		dnat        []byte // what leaves towards the realserver
		reply, snat []byte // the realserver's reply and what leaves towards the client
	}{
		{
			name: "tcp",
			in:   tcpFrame(client, 40000, vip, 80, pkt.SYN, nil),
			dnat: pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
				pkt.IPv4{Src: client, Dst: rsInside(1), Proto: pkt.ProtoTCP, ID: 7, FragOff: 0x4000}.Packet(
					pkt.TCP{SrcPort: 40000, DstPort: 8080, Seq: 1000, Ack: 2000, Flags: pkt.SYN}.Segment(client, rsInside(1)))),
			reply: rsTCP(pkt.SYN|pkt.ACK, []byte("hi")),
			snat: pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
				pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoTCP, ID: 7, FragOff: 0x4000}.Packet(
					pkt.TCP{SrcPort: 80, DstPort: 40000, Seq: 1000, Ack: 2000, Flags: pkt.SYN | pkt.ACK, Payload: []byte("hi")}.Segment(vip, client))),
		},
		{
			name: "udp",
			in:   udpFrame(client, 40001, vip, 53, []byte("query")),
			dnat: pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
				pkt.IPv4{Src: client, Dst: rsInside(1), Proto: pkt.ProtoUDP, ID: 7}.Packet(pkt.UDP(client, rsInside(1), 40001, 5353, []byte("query")))),
			reply: pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
				pkt.IPv4{Src: rsInside(1), Dst: client, Proto: pkt.ProtoUDP, ID: 7}.Packet(pkt.UDP(rsInside(1), client, 5353, 40001, []byte("answer")))),
			snat: pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
				pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoUDP, ID: 7}.Packet(pkt.UDP(vip, client, 53, 40001, []byte("answer")))),
		},
		{
			name: "udp without checksum",
			in: func() []byte {
				f := udpFrame(client, 40002, vip, 53, []byte("q"))
				f[14+20+6], f[14+20+7] = 0, 0
				return f
			}(),
			dnat: func() []byte {
				f := pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
					pkt.IPv4{Src: client, Dst: rsInside(1), Proto: pkt.ProtoUDP, ID: 7}.Packet(pkt.UDP(client, rsInside(1), 40002, 5353, []byte("q"))))
				f[14+20+6], f[14+20+7] = 0, 0
				return f
			}(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if v, _ := run(t, d.objs.XdpFront, tc.in); v != xdpPass {
				t.Fatalf("xdp verdict %d, want pass", v)
			}
			v, out := run(t, d.objs.TcFront, tc.in)
			if v != tcRedirect {
				t.Fatalf("tc front verdict %d, want redirect", v)
			}
			if diff := cmp.Diff(tc.dnat, out); diff != "" {
				t.Errorf("DNAT (-want +got):\n%s", diff)
			}
			if tc.reply == nil {
				return
			}
			if v, _ := run(t, d.objs.XdpInside, tc.reply); v != xdpPass {
				t.Fatalf("inside xdp verdict %d, want pass", v)
			}
			v, out = run(t, d.objs.TcInside, tc.reply)
			if v != tcRedirect {
				t.Fatalf("tc inside verdict %d, want redirect", v)
			}
			if diff := cmp.Diff(tc.snat, out); diff != "" {
				t.Errorf("SNAT (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("reply without connection", func(t *testing.T) {
		f := pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
			pkt.IPv4{Src: rsInside(1), Dst: client, Proto: pkt.ProtoTCP}.Packet(
				pkt.TCP{SrcPort: 8080, DstPort: 1234, Flags: pkt.ACK}.Segment(rsInside(1), client)))
		if v, _ := run(t, d.objs.TcInside, f); v != tcOK {
			t.Errorf("verdict %d, want ok (the kernel, which does not forward)", v)
		}
	})
	t.Run("to the gateway itself", func(t *testing.T) {
		f := pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
			pkt.IPv4{Src: rsInside(1), Dst: gateway, Proto: pkt.ProtoTCP}.Packet(
				pkt.TCP{SrcPort: 8080, DstPort: 22, Flags: pkt.SYN}.Segment(rsInside(1), gateway)))
		if v, _ := run(t, d.objs.TcInside, f); v != tcShot {
			t.Errorf("verdict %d, want shot", v)
		}
	})
	t.Run("no lease", func(t *testing.T) {
		if err := d.SetLease(vip, time.Time{}); err != nil {
			t.Fatal(err)
		}
		in := tcpFrame(client, 40000, vip, 80, pkt.ACK, nil)
		if v, _ := run(t, d.objs.XdpFront, in); v != xdpDrop {
			t.Errorf("xdp verdict %d, want drop", v)
		}
		if v, _ := run(t, d.objs.TcFront, in); v != tcShot {
			t.Errorf("tc verdict %d, want shot", v)
		}
		if v, _ := run(t, d.objs.TcInside, rsTCP(pkt.ACK, nil)); v != tcShot {
			t.Errorf("tc inside verdict %d, want shot", v)
		}
	})
}

func TestICMP(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 3))}, Gateways: []netip.Addr{gateway}})
	grantLease(t, d, vip, gateway)

	t.Run("echo", func(t *testing.T) {
		in := pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoICMP, ID: 9}.Packet(pkt.ICMP(8, 0, 0x12340001, []byte("ping"))))
		v, out := run(t, d.objs.XdpFront, in)
		if v != xdpTX {
			t.Fatalf("verdict %d, want tx", v)
		}
		want := pkt.Ether(clientMAC, frontMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoICMP, ID: 9}.Packet(pkt.ICMP(0, 0, 0x12340001, []byte("ping"))))
		if diff := cmp.Diff(want, out); diff != "" {
			t.Errorf("reply (-want +got):\n%s", diff)
		}
	})
	t.Run("echo to gateway on inside", func(t *testing.T) {
		in := pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
			pkt.IPv4{Src: rsInside(1), Dst: gateway, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(8, 0, 1, nil)))
		if v, out := run(t, d.objs.XdpInside, in); v != xdpTX || pkt.Verify(out) != nil {
			t.Errorf("verdict %d (%v), want tx with good checksums", v, pkt.Verify(out))
		}
	})
	t.Run("frag needed reaches the connection's realserver", func(t *testing.T) {
		syn := tcpFrame(client, 41000, vip, 80, pkt.SYN, nil)
		v, out := run(t, d.objs.XdpFront, syn)
		if v != xdpTX {
			t.Fatalf("syn verdict %d", v)
		}
		owner := rsOf(out)
		// A router on the realserver→client path reports the VIP's reply
		// too big; it quotes the reply's header.
		quoted := pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoTCP}.Packet(
			pkt.TCP{SrcPort: 80, DstPort: 41000, Flags: pkt.ACK}.Segment(vip, client))[:28]
		router := netip.MustParseAddr("192.0.2.254")
		in := pkt.Ether(frontMAC, routerMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: router, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(3, 4, 1400, quoted)))
		v, out = run(t, d.objs.XdpFront, in)
		if v != xdpTX {
			t.Fatalf("verdict %d, want tx", v)
		}
		if got := rsOf(out); got != owner {
			t.Errorf("went to rs%d, connection is on rs%d", got, owner)
		}
		if diff := cmp.Diff(in[12:], out[12:]); diff != "" {
			t.Errorf("payload changed (-want +got):\n%s", diff)
		}
		// The same when no XDP program saw it.
		if v, out := run(t, d.objs.TcFront, in); v != tcRedirect || rsOf(out) != owner {
			t.Errorf("tc: verdict %d to rs%d, want redirect to rs%d", v, rsOf(out), owner)
		}
		// No such connection: dropped, not guessed.
		quoted2 := append([]byte{}, quoted...)
		binary.BigEndian.PutUint16(quoted2[22:], 41001)
		in2 := pkt.Ether(frontMAC, routerMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: router, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(3, 4, 1400, quoted2)))
		if v, _ := run(t, d.objs.XdpFront, in2); v != xdpDrop {
			t.Errorf("unknown connection: verdict %d, want drop", v)
		}
	})
	t.Run("echo without lease", func(t *testing.T) {
		if err := d.SetLease(vip, time.Time{}); err != nil {
			t.Fatal(err)
		}
		in := pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(8, 0, 1, nil)))
		if v, _ := run(t, d.objs.XdpFront, in); v != xdpDrop {
			t.Errorf("verdict %d, want drop", v)
		}
	})
}

func TestMalformed(t *testing.T) {
	d := newTestDataplane(t, Config{})
	mustApply(t, d, State{Services: []Service{service(MH, reals(DR, 80, 3))}, VIPs: []netip.Addr{netip.MustParseAddr("198.51.100.2")}})
	grantLease(t, d, vip)
	other := netip.MustParseAddr("192.0.2.50")
	syn := tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)
	withOpts := pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
		pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoTCP, Options: []byte{1, 1, 1, 0}}.Packet(
			pkt.TCP{SrcPort: 40000, DstPort: 80, Flags: pkt.SYN}.Segment(client, vip)))
	frag := func(dst netip.Addr, off uint16) []byte {
		return pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
			pkt.IPv4{Src: client, Dst: dst, Proto: pkt.ProtoTCP, FragOff: off}.Packet(
				pkt.TCP{SrcPort: 40000, DstPort: 80, Flags: pkt.SYN}.Segment(client, dst)))
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		verdict uint32
		reason  Reason
	}{
		{"ethernet header only", syn[:14], xdpPass, ReasonXDPPassNotIP},
		{"ipv6", pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv6, make([]byte, 60)), xdpPass, ReasonXDPPassNotIP},
		{"truncated ip header", syn[:14+19], xdpPass, ReasonXDPPassNotIP},
		{"truncated tcp to vip", syn[:14+20+10], xdpDrop, ReasonDropTruncated},
		{"truncated tcp elsewhere", tcpFrame(client, 40000, other, 80, pkt.SYN, nil)[:14+20+10], xdpPass, ReasonXDPPassNotOwned},
		{"ip options to vip", withOpts, xdpDrop, ReasonDropIPOptions},
		{"first fragment to vip", frag(vip, 0x2000), xdpDrop, ReasonDropFragment},
		{"later fragment to vip", frag(vip, 0x0010), xdpDrop, ReasonDropFragment},
		{"fragment elsewhere", frag(other, 0x2000), xdpPass, ReasonXDPPassNotOwned},
		{"not a vip", tcpFrame(client, 40000, other, 80, pkt.SYN, nil), xdpPass, ReasonXDPPassNotOwned},
		{"vip, no such port", tcpFrame(client, 40000, vip, 81, pkt.SYN, nil), xdpDrop, ReasonDropNoService},
		{"vip, udp", udpFrame(client, 40000, vip, 80, nil), xdpDrop, ReasonDropNoService},
		{"vip without service", tcpFrame(client, 40000, netip.MustParseAddr("198.51.100.2"), 80, pkt.SYN, nil), xdpDrop, ReasonDropNoService},
		{"vip, gre", pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: 47}.Packet(make([]byte, 8))), xdpDrop, ReasonDropProto},
		{"vip, icmp redirect", pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(5, 0, 0, nil))), xdpDrop, ReasonDropProto},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, d, tc.reason)
			v, _ := run(t, d.objs.XdpFront, tc.in)
			if v != tc.verdict {
				t.Errorf("verdict %d, want %d", v, tc.verdict)
			}
			if after := counter(t, d, tc.reason); after != before+1 {
				t.Errorf("counter %s went %d→%d, want +1", tc.reason, before, after)
			}
			// TC must not let owned-address traffic through either.
			if tc.verdict == xdpDrop && len(tc.in) >= 34 {
				if v, _ := run(t, d.objs.TcFront, tc.in); v != tcShot {
					t.Errorf("tc verdict %d, want shot", v)
				}
			}
		})
	}
}

// The outer header always carries DF, as Linux ipip does: with ID 0 a
// fragmentable outer packet could be reassembled with another's fragments.
func TestTUNOuterDF(t *testing.T) {
	d := newTestDataplane(t, Config{})
	udp := Service{ServiceKey: ServiceKey{VIP: vip, Port: 53, Proto: UDP}, Realservers: reals(TUN, 53, 1)}
	mustApply(t, d, State{Services: []Service{udp}})
	grantLease(t, d, vip)
	in := udpFrame(client, 40000, vip, 53, []byte("query")) // inner DF clear
	for _, tc := range []struct {
		name string
		run  func() (uint32, []byte)
		want uint32
	}{
		{"xdp", func() (uint32, []byte) { return run(t, d.objs.XdpFront, in) }, xdpTX},
		{"tc", func() (uint32, []byte) { return run(t, d.objs.TcFront, in) }, tcRedirect},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, out := tc.run()
			if v != tc.want {
				t.Fatalf("verdict %d, want %d", v, tc.want)
			}
			if out[14+9] != pkt.ProtoIPIP {
				t.Fatalf("outer protocol %d, want IPIP", out[14+9])
			}
			if got := be16At(out, 14+6); got != 0x4000 {
				t.Errorf("outer flags/offset %#04x, want DF", got)
			}
			if err := pkt.Verify(out); err != nil {
				t.Error(err)
			}
		})
	}
}

// Events say which method a connection uses, and a NAT flow where only
// the realserver talks is still re-announced, so replicas keep it.
func TestNATEvents(t *testing.T) {
	d := newTestDataplane(t, Config{RefreshInterval: time.Millisecond})
	mustApply(t, d, State{Services: []Service{service(MH, reals(NAT, 8080, 1))}, Gateways: []netip.Addr{gateway}})
	grantLease(t, d, vip, gateway)
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 1000)
	done := make(chan error, 1)
	go func() {
		done <- d.Run(ctx, func(evs []Event) {
			for _, e := range evs {
				events <- e
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	if v, _ := run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)); v != xdpPass {
		t.Fatalf("xdp verdict %d, want pass", v)
	}
	select {
	case e := <-events:
		if e.Type != EventNew || e.Conn.Method != NAT {
			t.Errorf("first event %s with method %s, want new with nat", e.Type, e.Conn.Method)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the new connection")
	}
	reply := pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
		pkt.IPv4{Src: rsInside(1), Dst: client, Proto: pkt.ProtoTCP}.Packet(
			pkt.TCP{SrcPort: 8080, DstPort: 40000, Flags: pkt.ACK}.Segment(rsInside(1), client)))
	deadline := time.After(5 * time.Second)
	for {
		if v, _ := run(t, d.objs.TcInside, reply); v != tcRedirect {
			t.Fatalf("reply verdict %d, want redirect", v)
		}
		select {
		case e := <-events:
			if e.Type == EventRefresh {
				if e.Conn.Method != NAT {
					t.Errorf("refresh with method %s, want nat", e.Conn.Method)
				}
				return
			}
		case <-deadline:
			t.Fatal("replies alone never refreshed the connection")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
