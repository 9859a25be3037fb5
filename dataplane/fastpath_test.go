package dataplane

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// TestFastPathMatchesFull: xdp_front's fast path for established packets
// takes the steps xdp_main takes, so every frame gets the same verdict,
// bytes, counters and table entries whether it enters through xdp_front
// (fast path, else tail call) or straight into xdp_front_full.
func TestFastPathMatchesFull(t *testing.T) {
	for _, m := range []Method{DR, TUN, NAT} {
		t.Run(m.String(), func(t *testing.T) {
			port := uint16(80)
			if m == NAT {
				port = 8080
			}
			var ds [2]*Dataplane
			for i := range ds {
				ds[i] = newTestDataplane(t, Config{})
				mustApply(t, ds[i], State{Services: []Service{service(MH, reals(m, port, 3))}, Gateways: []netip.Addr{gateway}})
				grantLease(t, ds[i], vip, gateway)
			}
			other := netip.MustParseAddr("192.0.2.101")
			steps := []struct {
				name  string
				frame []byte
			}{
				{"syn", tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)},
				{"ack promotes", tcpFrame(client, 40000, vip, 80, pkt.ACK, nil)},
				{"established", tcpFrame(client, 40000, vip, 80, pkt.ACK, make([]byte, 64))},
				{"established again", tcpFrame(client, 40000, vip, 80, pkt.ACK|pkt.PSH, make([]byte, 200))},
				{"oversize", tcpFrame(client, 40000, vip, 80, pkt.ACK, make([]byte, 1500))},
				{"retransmitted syn", tcpFrame(client, 40000, vip, 80, pkt.SYN, nil)},
				{"fin", tcpFrame(client, 40000, vip, 80, pkt.FIN|pkt.ACK, nil)},
				{"after fin", tcpFrame(client, 40000, vip, 80, pkt.ACK, nil)},
				{"rst", tcpFrame(client, 40000, vip, 80, pkt.RST, nil)},
				{"after rst", tcpFrame(client, 40000, vip, 80, pkt.ACK, nil)},
				{"mid-stream", tcpFrame(other, 40001, vip, 80, pkt.ACK, nil)},
				{"mid-stream promoted", tcpFrame(other, 40001, vip, 80, pkt.ACK, nil)},
				{"mid-stream established", tcpFrame(other, 40001, vip, 80, pkt.ACK, make([]byte, 10))},
				{"udp, no service", udpFrame(client, 40000, vip, 80, nil)},
				{"not a vip", tcpFrame(client, 40000, netip.MustParseAddr("192.0.2.50"), 80, pkt.ACK, nil)},
				{"truncated", tcpFrame(client, 40000, vip, 80, pkt.ACK, nil)[:14+20+10]},
				{"fragment", pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4, pkt.IPv4{Src: client, Dst: vip, Proto: pkt.ProtoTCP, FragOff: 0x2000}.Packet(make([]byte, 20)))},
				{"arp", pkt.ARP(1, pkt.MAC("ff:ff:ff:ff:ff:ff"), clientMAC, client, pkt.MAC("00:00:00:00:00:00"), vip)},
			}
			for _, s := range steps {
				fastV, fastOut := run(t, ds[0].objs.XdpFront, s.frame)
				fullV, fullOut := run(t, ds[1].objs.XdpFrontFull, s.frame)
				if fastV != fullV || !bytes.Equal(fastOut, fullOut) {
					t.Fatalf("%s: xdp_front gave verdict %d and %x, xdp_front_full %d and %x", s.name, fastV, fastOut, fullV, fullOut)
				}
			}
			var st [2]Stats
			var conns [2][]string
			for i, d := range ds {
				var err error
				if st[i], err = d.Stats(); err != nil {
					t.Fatal(err)
				}
				cs, err := d.Connections()
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range cs {
					conns[i] = append(conns[i], fmt.Sprintf("%v %v %v %v", c.Key, c.Real, c.Method, c.State))
				}
				slices.Sort(conns[i])
			}
			if !maps.Equal(st[0].Reasons, st[1].Reasons) || !maps.Equal(st[0].Services, st[1].Services) ||
				!maps.Equal(st[0].Realservers, st[1].Realservers) || !maps.Equal(st[0].Active, st[1].Active) {
				t.Errorf("counters differ:\nxdp_front      %+v\nxdp_front_full %+v", st[0], st[1])
			}
			if !slices.Equal(conns[0], conns[1]) || len(conns[0]) != 2 {
				t.Errorf("connections differ (want 2 each):\nxdp_front      %q\nxdp_front_full %q", conns[0], conns[1])
			}
		})
	}
}

// TestFastPathServesEstablished: with xdp_front_full taken out of the
// program array, established packets are still forwarded (by the fast
// path alone), while anything else is dropped and counted as an error
// instead of leaking to the kernel.
func TestFastPathServesEstablished(t *testing.T) {
	for _, m := range []Method{DR, TUN, NAT} {
		t.Run(m.String(), func(t *testing.T) {
			d := newTestDataplane(t, Config{})
			mustApply(t, d, State{Services: []Service{service(MH, reals(m, 80, 3))}, Gateways: []netip.Addr{gateway}})
			grantLease(t, d, vip, gateway)
			run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.SYN, nil))
			run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.ACK, nil))
			if err := d.objs.FrontFull.Delete(uint32(0)); err != nil {
				t.Fatal(err)
			}
			want := uint32(xdpTX)
			if m == NAT {
				want = xdpPass
			}
			if v, _ := run(t, d.objs.XdpFront, tcpFrame(client, 40000, vip, 80, pkt.ACK, make([]byte, 64))); v != want {
				t.Errorf("established packet without xdp_front_full: verdict %d, want %d", v, want)
			}
			before := counter(t, d, ReasonDropError)
			if v, _ := run(t, d.objs.XdpFront, tcpFrame(client, 40001, vip, 80, pkt.SYN, nil)); v != xdpDrop {
				t.Errorf("new connection without xdp_front_full: verdict %d, want %d (drop)", v, xdpDrop)
			}
			if got := counter(t, d, ReasonDropError) - before; got != 1 {
				t.Errorf("error drops: %d, want 1", got)
			}
		})
	}
}
