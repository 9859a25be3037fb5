package dataplane

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// clientSeeds are frames from the client, to the VIP and elsewhere, good
// and bad, that both fuzz targets start from.
func clientSeeds() [][]byte {
	return [][]byte{
		tcpFrame(client, 40000, vip, 80, pkt.SYN, nil),
		tcpFrame(client, 40001, vip, 80, pkt.ACK, []byte("x")),
		tcpFrame(client, 40000, netip.MustParseAddr("192.0.2.50"), 80, pkt.SYN, nil),
		udpFrame(client, 5000, vip, 53, []byte("q")),
		pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(3, 4, 1400,
			pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoTCP}.Packet(pkt.TCP{SrcPort: 80, DstPort: 40000}.Segment(vip, client))[:28]))),
		pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoTCP, FragOff: 0x2000}.Packet(make([]byte, 20))),
		make([]byte, 14),
	}
}

// FuzzXDP feeds arbitrary frames to the front program: it must never
// fault, and it may transmit only what concerns an owned address.
func FuzzXDP(f *testing.F) {
	zero := pkt.MAC("00:00:00:00:00:00")
	for _, seed := range append(clientSeeds(),
		tcpFrame(client, 40000, vip, 443, pkt.SYN, nil),
		pkt.ARP(1, pkt.MAC("ff:ff:ff:ff:ff:ff"), clientMAC, client, zero, vip),
		pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(8, 0, 1, nil))),
	) {
		f.Add(seed)
	}
	d := newTestDataplane(f, Config{})
	svcs := []Service{service(MH, reals(DR, 80, 3))}
	svcs = append(svcs, Service{ServiceKey: ServiceKey{VIP: vip, Port: 53, Proto: UDP}, Realservers: reals(TUN, 53, 3)})
	mustApply(f, d, State{Services: svcs})
	grantLease(f, d, vip)

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 {
			return
		}
		v, out := run(t, d.objs.XdpFront, in)
		if v != xdpTX {
			return
		}
		switch binary.BigEndian.Uint16(in[12:]) {
		case pkt.EtherARP:
			if len(in) < 42 || netip.AddrFrom4([4]byte(in[38:42])) != vip {
				t.Fatalf("ARP reply for a request not about the VIP: % x", in)
			}
			if binary.BigEndian.Uint16(out[20:]) != 2 {
				t.Fatalf("transmitted ARP is not a reply: % x", out)
			}
		case pkt.EtherIPv4:
			if len(in) < 34 || netip.AddrFrom4([4]byte(in[30:34])) != vip {
				t.Fatalf("forwarded a packet not addressed to the VIP: % x", in)
			}
			dst := out[0:6]
			if rsOf(out) == 0 && string(dst) != string(in[6:12]) {
				t.Fatalf("sent to %x, neither a realserver nor the sender", dst)
			}
		default:
			t.Fatalf("transmitted ethertype %#04x", binary.BigEndian.Uint16(in[12:]))
		}
	})
}

// FuzzTC feeds arbitrary frames to the NAT programs, the front one and
// then the inside one: neither may fault, the front one may redirect only
// a packet for the VIP, to a NAT realserver, and the inside one only a
// realserver's packet, from the VIP; what they redirect keeps a correct
// IP header checksum correct (they update it, as the kernel does, so a
// wrong one stays wrong and the receiver drops it).
func FuzzTC(f *testing.F) {
	rsReply := func(sport, dport uint16) []byte {
		return pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
			pkt.IPv4{Src: rsInside(1), Dst: client, Proto: pkt.ProtoTCP}.Packet(
				pkt.TCP{SrcPort: sport, DstPort: dport, Flags: pkt.SYN | pkt.ACK}.Segment(rsInside(1), client)))
	}
	for _, seed := range append(clientSeeds(), rsReply(8080, 40000), rsReply(8080, 40001)) {
		f.Add(seed)
	}
	d := newTestDataplane(f, Config{})
	svcs := []Service{service(MH, reals(NAT, 8080, 3))}
	svcs = append(svcs, Service{ServiceKey: ServiceKey{VIP: vip, Port: 53, Proto: UDP}, Realservers: reals(NAT, 5353, 3)})
	mustApply(f, d, State{Services: svcs, Gateways: []netip.Addr{gateway}})
	grantLease(f, d, vip, gateway)
	isReal := func(a netip.Addr) bool { return a == rsInside(1) || a == rsInside(2) || a == rsInside(3) }
	ipv4 := func(in []byte) bool { return len(in) >= 34 && binary.BigEndian.Uint16(in[12:]) == pkt.EtherIPv4 }
	addr := func(b []byte, off int) netip.Addr { return netip.AddrFrom4([4]byte(b[off : off+4])) }

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 {
			return
		}
		if v, out, ok := tryRun(d.objs.TcFront, in); ok && v == tcRedirect {
			if !ipv4(in) || addr(in, 30) != vip {
				t.Fatalf("front redirected a packet not addressed to the VIP: % x", in)
			}
			if !ipv4(out) || !isReal(addr(out, 30)) {
				t.Fatalf("front redirected to no NAT realserver: % x", out)
			}
			if ipHeaderOK(in) && !ipHeaderOK(out) {
				t.Fatalf("front broke the IP header checksum: % x", out)
			}
		}
		if v, out, ok := tryRun(d.objs.TcInside, in); ok && v == tcRedirect {
			if !ipv4(in) || !isReal(addr(in, 26)) {
				t.Fatalf("inside redirected a packet from no realserver: % x", in)
			}
			if !ipv4(out) || addr(out, 26) != vip {
				t.Fatalf("inside redirected a packet not from the VIP: % x", out)
			}
			if ipHeaderOK(in) && !ipHeaderOK(out) {
				t.Fatalf("inside broke the IP header checksum: % x", out)
			}
		}
	})
}

// tryRun is run for inputs the kernel's test harness may refuse (it
// builds an skb, and rejects some frames before any program sees them).
func tryRun(p *ebpf.Program, in []byte) (uint32, []byte, bool) {
	opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := p.Run(&opts)
	return ret, opts.DataOut, err == nil
}

// ipHeaderOK reports whether the frame's IPv4 header checksum is right.
func ipHeaderOK(frame []byte) bool {
	ihl := int(frame[14]&0x0f) * 4
	if ihl < 20 || len(frame) < 14+ihl {
		return false
	}
	var sum uint32
	for i := 14; i < 14+ihl; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(frame[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}
