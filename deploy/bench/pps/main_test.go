package main

import (
	"net/netip"
	"testing"
)

// The random sources of a new tuple per packet stay inside 192.0.2.0/24
// and leave out every lab address, its network and broadcast addresses.
func TestNewTupleSources(t *testing.T) {
	subnet := netip.MustParsePrefix("192.0.2.0/24")
	lab := map[netip.Addr]string{
		netip.MustParseAddr(clientAddr):    "client",
		netip.MustParseAddr(dirFrontAddr):  "director front",
		netip.MustParseAddr("192.0.2.0"):   "network",
		netip.MustParseAddr("192.0.2.255"): "broadcast",
	}
	for i := range nReals {
		lab[netip.MustParseAddr(realFront(i))] = "realserver front"
	}
	for b := srcFirst; b <= srcLast; b++ {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(b)})
		if b > 255 || !subnet.Contains(a) {
			t.Fatalf("source byte %d leaves %s", b, subnet)
		}
		if what, ok := lab[a]; ok {
			t.Errorf("random source %s is the lab's %s", a, what)
		}
	}
	// doc.go quotes the count.
	if newTupleCount != 12_321_792 {
		t.Errorf("newTupleCount = %d, doc.go says 12,321,792", newTupleCount)
	}
}
