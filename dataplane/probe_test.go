package dataplane

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/raftlb/raftlb/dataplane/internal/pkt"
)

// skbMark is the head of struct __sk_buff up to mark, the one field
// PROG_TEST_RUN takes from it here.
type skbMark struct {
	Len, PktType, Mark uint32
}

func runMarked(t *testing.T, p *ebpf.Program, in []byte, mark uint32) (uint32, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256), Context: skbMark{Mark: mark}}
	ret, err := p.Run(&opts)
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	return ret, opts.DataOut
}

// TestTunProbeEgress: a probe the director sends to a VIP with a TUN
// probe's mark leaves IPv4-in-IPv4 to that realserver, from the front
// address with DF and a correct outer checksum, its Ethernet header (the
// route's choice) kept; unmarked packets and other marks leave untouched.
func TestTunProbeEgress(t *testing.T) {
	d := newTestDataplane(t, Config{})
	const mark = 0x52420007
	if err := d.SetTunProbe(mark, rsFront(2)); err != nil {
		t.Fatal(err)
	}
	in := pkt.Ether(rsMAC(2), frontMAC, pkt.EtherIPv4,
		pkt.IPv4{Src: dirFront, Dst: vip, Proto: pkt.ProtoTCP, TOS: 0x10, ID: 9, FragOff: 0x4000}.Packet(
			pkt.TCP{SrcPort: 41000, DstPort: 80, Seq: 1, Flags: pkt.SYN}.Segment(dirFront, vip)))

	v, out := runMarked(t, d.objs.TcFrontEgress, in, mark)
	if v != tcOK {
		t.Fatalf("verdict %d, want ok", v)
	}
	want := pkt.Ether(rsMAC(2), frontMAC, pkt.EtherIPv4,
		pkt.IPv4{Src: dirFront, Dst: rsFront(2), Proto: pkt.ProtoIPIP, TOS: 0x10, FragOff: 0x4000}.Packet(in[14:]))
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("frame (-want +got):\n%s", diff)
	}
	if err := pkt.Verify(out); err != nil {
		t.Error(err)
	}
	if got := counter(t, d, ReasonTCTxTUNProbe); got != 1 {
		t.Errorf("tc_tx_tun_probe %d, want 1", got)
	}

	for _, m := range []uint32{0, mark + 1} {
		if v, out := runMarked(t, d.objs.TcFrontEgress, in, m); v != tcOK || string(out) != string(in) {
			t.Errorf("mark %#x: verdict %d, frame changed %v, want ok and untouched", m, v, string(out) != string(in))
		}
	}

	if err := d.DeleteTunProbe(mark); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteTunProbe(mark); err != nil {
		t.Errorf("delete an absent probe: %v", err)
	}
	if v, out := runMarked(t, d.objs.TcFrontEgress, in, mark); v != tcOK || string(out) != string(in) {
		t.Errorf("deleted mark: verdict %d, want ok and untouched", v)
	}
	if err := d.SetTunProbe(0, rsFront(2)); !errors.Is(err, ErrInvalid) {
		t.Errorf("mark 0: %v, want ErrInvalid", err)
	}
}
