package dataplane

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// Per-packet cost through BPF_PROG_TEST_RUN, reported as ns/pkt (the
// kernel's own timing). Paths whose program leaves the packet as it found
// it repeat in the kernel; the others run once per call, minus the cost
// of an empty program run the same way.

func emptyProg(b *testing.B, typ ebpf.ProgramType) *ebpf.Program {
	b.Helper()
	ret := int32(2) // XDP_PASS
	if typ == ebpf.SchedCLS {
		ret = 0 // TC_ACT_OK
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         typ,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
	})
	if err != nil {
		b.Fatalf("load empty program: %v", err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

func benchDataplane(b *testing.B, m Method) *Dataplane {
	d := newTestDataplane(b, Config{ConnTableSize: 1 << 18})
	port := uint16(80)
	if m == NAT {
		port = 8080
	}
	mustApply(b, d, State{Services: []Service{service(MH, reals(m, port, 3))}, Gateways: []netip.Addr{gateway}})
	grantLease(b, d, vip, gateway)
	return d
}

// once measures single runs of p over frames from next, minus the empty
// program's single-run cost.
func once(b *testing.B, p, empty *ebpf.Program, want uint32, next func(i int) []byte) {
	var sum, base time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		in := next(i)
		ret, d, err := p.Benchmark(in, 1, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != want {
			b.Fatalf("verdict %d, want %d", ret, want)
		}
		_, e, err := empty.Benchmark(in, 1, nil)
		if err != nil {
			b.Fatal(err)
		}
		sum += d
		base += e
	}
	b.ReportMetric(float64(sum-base)/float64(b.N), "ns/pkt")
}

func repeat(b *testing.B, p *ebpf.Program, want uint32, in []byte) {
	ret, d, err := p.Benchmark(in, b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	if ret != want {
		b.Fatalf("verdict %d, want %d", ret, want)
	}
	b.ReportMetric(float64(d.Nanoseconds()), "ns/pkt")
}

// newConnFrames gives each iteration a new client port (and address when
// ports run out), flushing the table now and then so it never fills.
func newConnFrames(b *testing.B, d *Dataplane) func(int) []byte {
	return func(i int) []byte {
		if i > 0 && i%100000 == 0 {
			b.StopTimer()
			if err := d.Flush(nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		src := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i/60000%100)})
		return tcpFrame(src, uint16(1024+i%60000), vip, 80, pkt.SYN, nil)
	}
}

func BenchmarkXDP(b *testing.B) {
	est := tcpFrame(client, 40000, vip, 80, pkt.ACK, make([]byte, 64))
	b.Run("empty", func(b *testing.B) {
		needRoot(b)
		repeat(b, emptyProg(b, ebpf.XDP), xdpPass, est)
	})
	b.Run("dr/established", func(b *testing.B) {
		d := benchDataplane(b, DR)
		run(b, d.objs.XdpFront, est)
		repeat(b, d.objs.XdpFront, xdpTX, est)
	})
	b.Run("dr/established-once", func(b *testing.B) {
		d := benchDataplane(b, DR)
		run(b, d.objs.XdpFront, est)
		once(b, d.objs.XdpFront, emptyProg(b, ebpf.XDP), xdpTX, func(int) []byte { return est })
	})
	b.Run("dr/established-59k", func(b *testing.B) {
		// As many flows as the pps lab's: their table entries are not
		// all in the cache, as on a busy director.
		d := benchDataplane(b, DR)
		frames := make([][]byte, 59000)
		for i := range frames {
			src := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i/60000%100)})
			frames[i] = tcpFrame(src, uint16(1024+i), vip, 80, pkt.ACK, make([]byte, 64))
			run(b, d.objs.XdpFront, frames[i])
		}
		rng := rand.New(rand.NewPCG(1, 2))
		once(b, d.objs.XdpFront, emptyProg(b, ebpf.XDP), xdpTX, func(int) []byte { return frames[rng.IntN(len(frames))] })
	})
	b.Run("dr/new", func(b *testing.B) {
		d := benchDataplane(b, DR)
		once(b, d.objs.XdpFront, emptyProg(b, ebpf.XDP), xdpTX, newConnFrames(b, d))
	})
	b.Run("tun/established", func(b *testing.B) {
		d := benchDataplane(b, TUN)
		run(b, d.objs.XdpFront, est)
		once(b, d.objs.XdpFront, emptyProg(b, ebpf.XDP), xdpTX, func(int) []byte { return est })
	})
	b.Run("tun/new", func(b *testing.B) {
		d := benchDataplane(b, TUN)
		once(b, d.objs.XdpFront, emptyProg(b, ebpf.XDP), xdpTX, newConnFrames(b, d))
	})
	b.Run("nat/xdp-pass", func(b *testing.B) {
		// Once per call: the program puts its pick in front of the
		// packet (XDP metadata), which a repetition would find there.
		d := benchDataplane(b, NAT)
		run(b, d.objs.XdpFront, est)
		once(b, d.objs.XdpFront, emptyProg(b, ebpf.XDP), xdpPass, func(int) []byte { return est })
	})
	b.Run("not-vip/pass", func(b *testing.B) {
		d := benchDataplane(b, DR)
		repeat(b, d.objs.XdpFront, xdpPass, tcpFrame(client, 40000, netip.MustParseAddr("192.0.2.50"), 80, pkt.ACK, nil))
	})
	b.Run("arp/reply", func(b *testing.B) {
		d := benchDataplane(b, DR)
		in := pkt.ARP(1, pkt.MAC("ff:ff:ff:ff:ff:ff"), clientMAC, client, pkt.MAC("00:00:00:00:00:00"), vip)
		once(b, d.objs.XdpFront, emptyProg(b, ebpf.XDP), xdpTX, func(int) []byte { return in })
	})
}

// BenchmarkMemory: one load at a random bucket of a BPF array as big as
// the default connection table (mapped like it), once per call minus an
// empty run: the cache and TLB misses under any insert into that table.
func BenchmarkMemory(b *testing.B) {
	needRoot(b)
	var def Config
	def.setDefaults()
	n := ctBuckets(def.ConnTableSize)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(ctBucketSize), MaxEntries: n, Flags: unix.BPF_F_MMAPABLE})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	// The bucket index is the packet's first word.
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // ctx->data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // ctx->data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 4),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R4, asm.R2, 0, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R4, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R0, asm.R0, 0, asm.Word),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("out"),
		asm.Return(),
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	b.Run("random-read", func(b *testing.B) {
		rng := rand.New(rand.NewPCG(1, 2))
		in := make([]byte, 64)
		once(b, p, emptyProg(b, ebpf.XDP), xdpPass, func(int) []byte {
			binary.NativeEndian.PutUint32(in, rng.Uint32N(n))
			return in
		})
	})
}

func BenchmarkTC(b *testing.B) {
	est := tcpFrame(client, 40000, vip, 80, pkt.ACK, make([]byte, 64))
	b.Run("nat-in/established", func(b *testing.B) {
		d := benchDataplane(b, NAT)
		run(b, d.objs.TcFront, est)
		once(b, d.objs.TcFront, emptyProg(b, ebpf.SchedCLS), tcRedirect, func(int) []byte { return est })
	})
	b.Run("nat-in/new", func(b *testing.B) {
		d := benchDataplane(b, NAT)
		once(b, d.objs.TcFront, emptyProg(b, ebpf.SchedCLS), tcRedirect, newConnFrames(b, d))
	})
	b.Run("nat-out/established", func(b *testing.B) {
		d := benchDataplane(b, NAT)
		_, out := run(b, d.objs.TcFront, est)
		rs := rsInside(1)
		for i := 1; i <= 3; i++ {
			if string(out[30:34]) == string(rsInside(i).AsSlice()) {
				rs = rsInside(i)
			}
		}
		reply := pkt.Ether(insideMAC, rsMAC(1), pkt.EtherIPv4,
			pkt.IPv4{Src: rs, Dst: client, Proto: pkt.ProtoTCP}.Packet(
				pkt.TCP{SrcPort: 8080, DstPort: 40000, Flags: pkt.ACK, Payload: make([]byte, 64)}.Segment(rs, client)))
		once(b, d.objs.TcInside, emptyProg(b, ebpf.SchedCLS), tcRedirect, func(int) []byte { return reply })
	})
}
