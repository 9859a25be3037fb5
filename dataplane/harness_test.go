package dataplane

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// XDP and TC verdicts.
const (
	xdpAborted = 0
	xdpDrop    = 1
	xdpPass    = 2
	xdpTX      = 3

	tcOK       = 0
	tcShot     = 2
	tcRedirect = 7
)

var (
	frontMAC  = pkt.MAC("02:00:00:00:01:01")
	insideMAC = pkt.MAC("02:00:00:00:02:01")
	clientMAC = pkt.MAC("02:00:00:00:00:64")
	routerMAC = pkt.MAC("02:00:00:00:00:fe")

	dirFront  = netip.MustParseAddr("192.0.2.1")
	dirInside = netip.MustParseAddr("203.0.113.1")
	client    = netip.MustParseAddr("192.0.2.100")
	vip       = netip.MustParseAddr("198.51.100.1")
	gateway   = netip.MustParseAddr("203.0.113.254")
)

// rsFront is realserver i's front address (DR, TUN), rsInside its inside
// address (NAT), rsMAC its front MAC.
func rsFront(i int) netip.Addr  { return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}) }
func rsInside(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}) }
func rsMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{2, 0, 0, 0, 1, byte(0x10 + i)}
}

type staticNeigh map[netip.Addr]net.HardwareAddr

func (s staticNeigh) lookup(addrs []netip.Addr) map[netip.Addr]net.HardwareAddr {
	out := make(map[netip.Addr]net.HardwareAddr)
	for _, a := range addrs {
		if m, ok := s[a]; ok {
			out[a] = m
		}
	}
	return out
}

func (staticNeigh) retain([]netip.Addr) {}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
}

// newTestDataplane loads the programs without attaching them, with fake
// interfaces and realservers 1..3 resolved.
func newTestDataplane(t testing.TB, cfg Config) *Dataplane {
	t.Helper()
	needRoot(t)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.ConnTableSize == 0 {
		cfg.ConnTableSize = 1 << 16
	}
	neigh := staticNeigh{}
	for i := 1; i <= 3; i++ {
		neigh[rsFront(i)] = rsMAC(i)
	}
	d, err := load(cfg, neigh,
		iface{index: 2, name: "front", mac: frontMAC, addr: dirFront},
		iface{index: 3, name: "inside", mac: insideMAC, addr: dirInside})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func reals(m Method, port uint16, n int) []Realserver {
	var out []Realserver
	for i := 1; i <= n; i++ {
		a := rsFront(i)
		if m == NAT {
			a = rsInside(i)
		}
		out = append(out, Realserver{Addr: a, Port: port, Weight: 1, Method: m})
	}
	return out
}

func service(sched Scheduler, rs []Realserver) Service {
	return Service{ServiceKey: ServiceKey{VIP: vip, Port: 80, Proto: TCP}, Scheduler: sched, Realservers: rs}
}

func mustApply(t testing.TB, d *Dataplane, s State) {
	t.Helper()
	if err := d.Apply(s); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func grantLease(t testing.TB, d *Dataplane, addrs ...netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		if err := d.SetLease(a, time.Now().Add(time.Hour)); err != nil {
			t.Fatalf("set lease: %v", err)
		}
	}
}

func run(t testing.TB, p *ebpf.Program, in []byte) (uint32, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := p.Run(&opts)
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	return ret, opts.DataOut
}

// tcpFrame is a client→dst TCP frame as it reaches the director.
func tcpFrame(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags uint8, payload []byte) []byte {
	return pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
		pkt.IPv4{Src: src, Dst: dst, Proto: pkt.ProtoTCP, ID: 7, FragOff: 0x4000}.Packet(
			pkt.TCP{SrcPort: sport, DstPort: dport, Seq: 1000, Ack: 2000, Flags: flags, Payload: payload}.Segment(src, dst)))
}

func udpFrame(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, payload []byte) []byte {
	return pkt.Ether(frontMAC, clientMAC, pkt.EtherIPv4,
		pkt.IPv4{Src: src, Dst: dst, Proto: pkt.ProtoUDP, ID: 7}.Packet(pkt.UDP(src, dst, sport, dport, payload)))
}

// dstMAC is the destination MAC of a frame, as realserver index (0 if none).
func rsOf(frame []byte) int {
	for i := 1; i <= 3; i++ {
		if string(frame[:6]) == string(rsMAC(i)) {
			return i
		}
	}
	return 0
}

func counter(t testing.TB, d *Dataplane, r Reason) uint64 {
	t.Helper()
	st, err := d.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	return st.Reasons[r]
}

func be16At(b []byte, off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }
