package ha

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// ARPOp is the operation of an ARP packet.
type ARPOp uint16

// ARP operations.
const (
	ARPRequest ARPOp = 1
	ARPReply   ARPOp = 2
)

// frameLen is the minimum Ethernet frame without FCS; ARP is padded to it.
const frameLen = 60

// GratuitousARP builds a broadcast Ethernet frame announcing that ip is at
// mac. The request form (RFC 5227, keepalived) has sender IP = target IP =
// ip and a zero target MAC; the reply form has target MAC = sender MAC,
// which Linux also treats as gratuitous.
func GratuitousARP(op ARPOp, mac net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("build gratuitous arp: mac %s is not ethernet", mac)
	}
	if !ip.Is4() {
		return nil, fmt.Errorf("build gratuitous arp: %s is not ipv4", ip)
	}
	b := make([]byte, frameLen)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], mac)
	binary.BigEndian.PutUint16(b[12:14], 0x0806) // ARP
	a := b[14:]
	binary.BigEndian.PutUint16(a[0:2], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(a[2:4], 0x0800) // protocol: IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], uint16(op))
	ip4 := ip.As4()
	copy(a[8:14], mac)
	copy(a[14:18], ip4[:])
	if op == ARPReply {
		copy(a[18:24], mac)
	}
	copy(a[24:28], ip4[:])
	return b, nil
}

// IfaceAnnouncer sends gratuitous ARP for VIPs on one interface and for the
// NAT gateway on another.
type IfaceAnnouncer struct {
	// VIP announces VIPs (the front interface).
	VIP *GARPSender
	// Gateway announces the NAT gateway (the inside interface); nil when
	// the director has no inside interface.
	Gateway *GARPSender
}

// Announce implements Announcer.
func (a IfaceAnnouncer) Announce(ctx context.Context, addr netip.Addr, kind raftlbv1.AddressKind) error {
	s := a.VIP
	if kind == raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY {
		s = a.Gateway
	}
	if s == nil {
		return fmt.Errorf("announce %s: no interface for %s: %w", addr, kind, ErrClosed)
	}
	return s.Send(ctx, addr)
}
