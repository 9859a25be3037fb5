package dataplane

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// FuzzXDP feeds arbitrary frames to the front program: it must never
// fault, and it may transmit only what concerns an owned address.
func FuzzXDP(f *testing.F) {
	zero := pkt.MAC("00:00:00:00:00:00")
	for _, seed := range [][]byte{
		tcpFrame(client, 40000, vip, 80, pkt.SYN, nil),
		tcpFrame(client, 40001, vip, 80, pkt.ACK, []byte("x")),
		tcpFrame(client, 40000, vip, 443, pkt.SYN, nil),
		tcpFrame(client, 40000, netip.MustParseAddr("192.0.2.50"), 80, pkt.SYN, nil),
		udpFrame(client, 5000, vip, 53, []byte("q")),
		pkt.ARP(1, pkt.MAC("ff:ff:ff:ff:ff:ff"), clientMAC, client, zero, vip),
		pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(8, 0, 1, nil))),
		pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoICMP}.Packet(pkt.ICMP(3, 4, 1400,
			pkt.IPv4{Src: vip, Dst: client, Proto: pkt.ProtoTCP}.Packet(pkt.TCP{SrcPort: 80, DstPort: 40000}.Segment(vip, client))[:28]))),
		pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoTCP, FragOff: 0x2000}.Packet(make([]byte, 20))),
		make([]byte, 14),
	} {
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
