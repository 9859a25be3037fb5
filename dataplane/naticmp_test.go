package dataplane

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// requote is quote (an IPv4 header and what follows) with one address and
// one port replaced and the IP checksum recomputed; the L4 checksum stays,
// as the director leaves it.
func requote(quote []byte, addrOff int, a netip.Addr, portOff int, port uint16) []byte {
	q := append([]byte{}, quote...)
	b := a.As4()
	copy(q[addrOff:], b[:])
	binary.BigEndian.PutUint16(q[portOff:], port)
	binary.BigEndian.PutUint16(q[10:], 0)
	binary.BigEndian.PutUint16(q[10:], pkt.Checksum(q[:20], 0))
	return q
}

// ICMP errors about NAT connections are translated both ways, quoted
// packet included, so path-MTU discovery and port unreachables work
// through NAT.
func TestNATICMPErrors(t *testing.T) {
	d := newTestDataplane(t, Config{})
	tcp := service(MH, reals(NAT, 8080, 1))
	udp := Service{ServiceKey: ServiceKey{VIP: vip, Port: 53, Proto: UDP}, Realservers: reals(NAT, 5353, 1)}
	mustApply(t, d, State{Services: []Service{tcp, udp}, Gateways: []netip.Addr{gateway}})
	grantLease(t, d, vip, gateway)
	rs := rsInside(1)
	router := netip.MustParseAddr("192.0.2.254")
	insideRouter := netip.MustParseAddr("203.0.113.99")

	for _, in := range [][]byte{
		tcpFrame(client, 42000, vip, 80, pkt.SYN, nil),
		udpFrame(client, 42001, vip, 53, []byte("query")),
	} {
		if v, _ := run(t, d.objs.TcFront, in); v != tcRedirect {
			t.Fatalf("opening connection: verdict %d, want redirect", v)
		}
	}

	// What routers and realservers quote: a whole segment, or the IP
	// header and 8 bytes.
	vipReply := pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoTCP, ID: 3, FragOff: 0x4000}.Packet(
		pkt.TCP{SrcPort: 80, DstPort: 42000, Seq: 5, Ack: 6, Flags: pkt.ACK, Payload: []byte("big reply")}.Segment(vip, client))
	vipUDP := pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoUDP, ID: 4}.Packet(
		pkt.UDP(vip, client, 53, 42001, []byte("answer")))[:28]
	rsTCP := pkt.IPv4{Src: client, Dst: rs, Proto: pkt.ProtoTCP, ID: 5, FragOff: 0x4000}.Packet(
		pkt.TCP{SrcPort: 42000, DstPort: 8080, Seq: 7, Ack: 8, Flags: pkt.ACK, Payload: []byte("big request")}.Segment(client, rs))
	rsUDP := pkt.IPv4{Src: client, Dst: rs, Proto: pkt.ProtoUDP, ID: 6}.Packet(
		pkt.UDP(client, rs, 42001, 5353, []byte("query")))[:28]

	icmpFrame := func(dst, src []byte, from, to netip.Addr, typ, code uint8, rest uint32, quote []byte) []byte {
		return pkt.Ether(dst, src, pkt.EtherIPv4,
			pkt.IPv4{Src: from, Dst: to, Proto: pkt.ProtoICMP, ID: 11, TTL: 60}.Packet(pkt.ICMP(typ, code, rest, quote)))
	}

	t.Run("front", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			quote []byte
			rport uint16
		}{
			{"tcp frag needed, whole segment", vipReply, 8080},
			{"udp frag needed, 8 bytes", vipUDP, 5353},
		} {
			t.Run(tc.name, func(t *testing.T) {
				in := icmpFrame(frontMAC, routerMAC, router, vip, 3, 4, 1400, tc.quote)
				if v, _ := run(t, d.objs.XdpFront, in); v != xdpPass {
					t.Fatalf("xdp verdict %d, want pass", v)
				}
				v, out := run(t, d.objs.TcFront, in)
				if v != tcRedirect {
					t.Fatalf("tc verdict %d, want redirect", v)
				}
				want := icmpFrame(frontMAC, routerMAC, router, rs, 3, 4, 1400, requote(tc.quote, 12, rs, 20, tc.rport))
				if diff := cmp.Diff(want, out); diff != "" {
					t.Errorf("translated (-want +got):\n%s", diff)
				}
				if err := pkt.Verify(out); err != nil {
					t.Error(err)
				}
			})
		}
	})

	t.Run("inside", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			from  netip.Addr
			typ   uint8
			code  uint8
			rest  uint32
			quote []byte
			vport uint16
		}{
			{"udp port unreachable from the realserver", rs, 3, 3, 0, rsUDP, 53},
			{"tcp frag needed from an inside router", insideRouter, 3, 4, 1400, rsTCP, 80},
			{"tcp time exceeded", insideRouter, 11, 0, 0, rsTCP, 80},
		} {
			t.Run(tc.name, func(t *testing.T) {
				in := icmpFrame(insideMAC, rsMAC(1), tc.from, client, tc.typ, tc.code, tc.rest, tc.quote)
				before := counter(t, d, ReasonTCNATICMPOut)
				v, out := run(t, d.objs.TcInside, in)
				if v != tcRedirect {
					t.Fatalf("tc verdict %d, want redirect", v)
				}
				want := icmpFrame(insideMAC, rsMAC(1), vip, client, tc.typ, tc.code, tc.rest, requote(tc.quote, 16, vip, 22, tc.vport))
				if diff := cmp.Diff(want, out); diff != "" {
					t.Errorf("translated (-want +got):\n%s", diff)
				}
				if err := pkt.Verify(out); err != nil {
					t.Error(err)
				}
				if got := counter(t, d, ReasonTCNATICMPOut); got != before+1 {
					t.Errorf("%s counter %d, want %d", ReasonTCNATICMPOut, got, before+1)
				}
			})
		}
	})

	unknownVIP := append([]byte{}, vipUDP...)
	binary.BigEndian.PutUint16(unknownVIP[22:], 42999)
	unknownRS := append([]byte{}, rsUDP...)
	binary.BigEndian.PutUint16(unknownRS[20:], 42999)
	toGateway := icmpFrame(insideMAC, rsMAC(1), rs, gateway, 3, 3, 0, rsUDP)
	for _, tc := range []struct {
		name   string
		prog   func() uint32
		want   uint32
		reason Reason
	}{
		{"front, no connection", func() uint32 {
			v, _ := run(t, d.objs.TcFront, icmpFrame(frontMAC, routerMAC, router, vip, 3, 4, 1400, unknownVIP))
			return v
		}, tcShot, ReasonDropICMPNoConn},
		{"front, echo request is for XDP", func() uint32 {
			v, _ := run(t, d.objs.TcFront, icmpFrame(frontMAC, clientMAC, client, vip, 8, 0, 1, nil))
			return v
		}, tcShot, ReasonDropProto},
		{"front, truncated quote", func() uint32 {
			v, _ := run(t, d.objs.TcFront, icmpFrame(frontMAC, routerMAC, router, vip, 3, 4, 1400, vipUDP[:22]))
			return v
		}, tcShot, ReasonDropTruncated},
		{"inside, quoted packet of no NAT connection", func() uint32 {
			v, _ := run(t, d.objs.TcInside, icmpFrame(insideMAC, rsMAC(1), rs, client, 3, 3, 0, unknownRS))
			return v
		}, tcOK, ReasonTCPass},
		{"inside, addressed to someone other than the client", func() uint32 {
			v, _ := run(t, d.objs.TcInside, toGateway)
			return v
		}, tcShot, ReasonDropICMPNoConn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, d, tc.reason)
			if v := tc.prog(); v != tc.want {
				t.Fatalf("verdict %d, want %d", v, tc.want)
			}
			if got := counter(t, d, tc.reason); got != before+1 {
				t.Errorf("%s counter %d, want %d", tc.reason, got, before+1)
			}
		})
	}

	t.Run("no lease", func(t *testing.T) {
		if err := d.SetLease(vip, time.Time{}); err != nil {
			t.Fatal(err)
		}
		before := counter(t, d, ReasonDropNoLease)
		if v, _ := run(t, d.objs.TcFront, icmpFrame(frontMAC, routerMAC, router, vip, 3, 4, 1400, vipReply)); v != tcShot {
			t.Errorf("front verdict %d, want shot", v)
		}
		if v, _ := run(t, d.objs.TcInside, icmpFrame(insideMAC, rsMAC(1), rs, client, 3, 3, 0, rsUDP)); v != tcShot {
			t.Errorf("inside verdict %d, want shot", v)
		}
		if got := counter(t, d, ReasonDropNoLease); got != before+2 {
			t.Errorf("%s counter %d, want %d", ReasonDropNoLease, got, before+2)
		}
	})
}
