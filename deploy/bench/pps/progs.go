package main

import (
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// XDP verdicts.
const (
	xdpPass = 2
	xdpTX   = 3
)

// TC verdicts (tcx: TCX_PASS, TCX_DROP).
const (
	tcActOK   = 0
	tcActShot = 2
)

// newSink loads the realservers' end of the path: a TC program (tcx
// ingress) that counts IPv4 packets in a per-CPU array and drops them.
// ARP goes on to the kernel, so the director can resolve the realservers.
//
// It is TC, not XDP, on purpose. Generic XDP, the mode this lab runs XDP
// in, needs XDP_PACKET_HEADROOM (256 bytes) in front of the frame and
// copies every skb that has less (netif_receive_generic_xdp:
// skb_cow_data_for_xdp, then pskb_expand_head). trafgen's frames arrive
// with 16 bytes, so a director running generic XDP copies each packet
// once and leaves it 272 bytes; a TUN packet it then encapsulates
// (bpf_xdp_adjust_head by -20) leaves with 252, so an XDP sink copied it
// a second time, and the nftables and direct paths paid their only copy
// at an XDP sink. Counted on raftlb-tun: two pskb_expand_head per packet
// against raftlb-dr's one, ~120 ns a copy, a few percent of a packet's
// time in this lab. A TC program needs no headroom and costs every path
// the same.
func newSink() (*ebpf.Program, *ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("create sink counter: %w", err)
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "pps_sink",
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 16, asm.Word), // __sk_buff.protocol
			asm.JNE.Imm(asm.R2, 0x0008, "pass"),       // ETH_P_IP, network byte order
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, tcActShot).WithSymbol("out"),
			asm.Return(),
			asm.Mov.Imm(asm.R0, tcActOK).WithSymbol("pass"),
			asm.Return(),
		},
	})
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("load sink: %w", err)
	}
	return p, m, nil
}

func sinkCount(m *ebpf.Map) (uint64, error) {
	var per []uint64
	if err := m.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read sink counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// newBounce loads the bare XDP forwarder: set the destination MAC to dst
// and the source MAC to src, send the frame back out (XDP_TX).
func newBounce(dst, src net.HardwareAddr) (*ebpf.Program, error) {
	word := func(b []byte) int32 {
		return int32(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
	}
	half := func(b []byte) int64 { return int64(uint16(b[0]) | uint16(b[1])<<8) }
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "pps_bounce",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14),
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
			asm.StoreImm(asm.R2, 0, int64(word(dst[0:4])), asm.Word),
			asm.StoreImm(asm.R2, 4, half(dst[4:6]), asm.Half),
			asm.StoreImm(asm.R2, 6, int64(word(src[0:4])), asm.Word),
			asm.StoreImm(asm.R2, 10, half(src[4:6]), asm.Half),
			asm.Mov.Imm(asm.R0, xdpTX),
			asm.Return(),
			asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load bounce: %w", err)
	}
	return p, nil
}
