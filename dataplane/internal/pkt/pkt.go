// Package pkt builds and checks the Ethernet/IPv4 frames the dataplane
// tests feed to the programs.
package pkt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Ethertypes and protocols.
const (
	EtherIPv4 = 0x0800
	EtherARP  = 0x0806
	EtherIPv6 = 0x86dd

	ProtoICMP = 1
	ProtoIPIP = 4
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// TCP flags.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// MAC parses a MAC address or panics; for literals in tests.
func MAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// Ether prepends an Ethernet header.
func Ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], typ)
	return append(b, payload...)
}

// IPv4 is an IPv4 header; zero TTL means 64.
type IPv4 struct {
	Src, Dst netip.Addr
	Proto    uint8
	TOS      uint8
	ID       uint16
	FragOff  uint16 // flags and offset, as on the wire
	TTL      uint8
	Options  []byte // multiple of 4 bytes
}

// Packet returns the header with payload, tot_len and checksum filled.
func (h IPv4) Packet(payload []byte) []byte {
	hl := 20 + len(h.Options)
	b := make([]byte, hl, hl+len(payload))
	b[0] = 0x40 | byte(hl/4)
	b[1] = h.TOS
	binary.BigEndian.PutUint16(b[2:], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(b[4:], h.ID)
	binary.BigEndian.PutUint16(b[6:], h.FragOff)
	b[8] = h.TTL
	if b[8] == 0 {
		b[8] = 64
	}
	b[9] = h.Proto
	s, d := h.Src.As4(), h.Dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	copy(b[20:], h.Options)
	binary.BigEndian.PutUint16(b[10:], Checksum(b[:hl], 0))
	return append(b, payload...)
}

// TCP is a TCP header without options.
type TCP struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            uint8
	Window           uint16
	Payload          []byte
}

// Segment returns the TCP segment with its checksum for src→dst.
func (t TCP) Segment(src, dst netip.Addr) []byte {
	b := make([]byte, 20, 20+len(t.Payload))
	binary.BigEndian.PutUint16(b[0:], t.SrcPort)
	binary.BigEndian.PutUint16(b[2:], t.DstPort)
	binary.BigEndian.PutUint32(b[4:], t.Seq)
	binary.BigEndian.PutUint32(b[8:], t.Ack)
	b[12] = 5 << 4
	b[13] = t.Flags
	w := t.Window
	if w == 0 {
		w = 65535
	}
	binary.BigEndian.PutUint16(b[14:], w)
	b = append(b, t.Payload...)
	binary.BigEndian.PutUint16(b[16:], Checksum(b, pseudo(src, dst, ProtoTCP, len(b))))
	return b
}

// UDP returns a UDP datagram with its checksum for src→dst.
func UDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b = append(b, payload...)
	c := Checksum(b, pseudo(src, dst, ProtoUDP, len(b)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(b[6:], c)
	return b
}

// ICMP returns an ICMP message with its checksum; rest is the 4 bytes
// after the checksum (id and sequence of an echo, MTU of frag-needed).
func ICMP(typ, code uint8, rest uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0], b[1] = typ, code
	binary.BigEndian.PutUint32(b[4:], rest)
	b = append(b, body...)
	binary.BigEndian.PutUint16(b[2:], Checksum(b, 0))
	return b
}

// ARP returns an Ethernet ARP frame (op 1 request, 2 reply).
func ARP(op uint16, ethDst, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)
	binary.BigEndian.PutUint16(b[2:], EtherIPv4)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], op)
	copy(b[8:14], sha)
	s, t := spa.As4(), tpa.As4()
	copy(b[14:18], s[:])
	copy(b[18:24], tha)
	copy(b[24:28], t[:])
	return Ether(ethDst, sha, EtherARP, b)
}

func pseudo(src, dst netip.Addr, proto uint8, n int) uint32 {
	s, d := src.As4(), dst.As4()
	var sum uint32
	sum += uint32(binary.BigEndian.Uint16(s[0:])) + uint32(binary.BigEndian.Uint16(s[2:]))
	sum += uint32(binary.BigEndian.Uint16(d[0:])) + uint32(binary.BigEndian.Uint16(d[2:]))
	return sum + uint32(proto) + uint32(n)
}

// Checksum is the Internet checksum of b, starting from a partial sum.
func Checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Verify checks the IPv4 header checksum and the TCP, UDP or ICMP checksum
// of an Ethernet frame, descending into IP-in-IP.
func Verify(frame []byte) error {
	if len(frame) < 14 || binary.BigEndian.Uint16(frame[12:]) != EtherIPv4 {
		return errors.New("not an IPv4 frame")
	}
	return verifyIP(frame[14:])
}

func verifyIP(ip []byte) error {
	if len(ip) < 20 {
		return errors.New("truncated IPv4 header")
	}
	hl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot > len(ip) || hl > tot {
		return fmt.Errorf("tot_len %d, have %d bytes", tot, len(ip))
	}
	if c := Checksum(ip[:hl], 0); c != 0 {
		return fmt.Errorf("bad IPv4 header checksum %#04x", binary.BigEndian.Uint16(ip[10:]))
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	l4 := ip[hl:tot]
	switch ip[9] {
	case ProtoIPIP:
		return verifyIP(l4)
	case ProtoTCP:
		if Checksum(l4, pseudo(src, dst, ProtoTCP, len(l4))) != 0 {
			return errors.New("bad TCP checksum")
		}
	case ProtoUDP:
		if len(l4) >= 8 && binary.BigEndian.Uint16(l4[6:]) != 0 && Checksum(l4, pseudo(src, dst, ProtoUDP, len(l4))) != 0 {
			return errors.New("bad UDP checksum")
		}
	case ProtoICMP:
		if Checksum(l4, 0) != 0 {
			return errors.New("bad ICMP checksum")
		}
	}
	return nil
}
