package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// GARPSender sends gratuitous ARP on one interface through an AF_PACKET
// socket. It is safe for concurrent use.
type GARPSender struct {
	iface   string
	ifindex int
	mac     net.HardwareAddr
	reply   bool
	log     *slog.Logger

	mu sync.Mutex
	fd int
}

// OpenGARP opens a sender on the named interface of the current network
// namespace. withReply adds the reply form after each request, for hosts
// that ignore gratuitous requests. Needs CAP_NET_RAW.
func OpenGARP(iface string, withReply bool, log *slog.Logger) (*GARPSender, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("find interface %s: %w", iface, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("open gratuitous arp on %s: no ethernet address", iface)
	}
	// Protocol 0: the socket only sends and never queues received frames.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open packet socket on %s: %w", iface, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &GARPSender{iface: iface, ifindex: ifi.Index, mac: ifi.HardwareAddr, reply: withReply,
		log: log.With("component", "garp", "iface", iface), fd: fd}, nil
}

// MAC is the interface's hardware address, the one announced.
func (s *GARPSender) MAC() net.HardwareAddr { return s.mac }

// Send announces addr: a gratuitous request, then a reply if configured.
func (s *GARPSender) Send(ctx context.Context, addr netip.Addr) error {
	ops := []ARPOp{ARPRequest}
	if s.reply {
		ops = append(ops, ARPReply)
	}
	for _, op := range ops {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("send gratuitous arp for %s: %w", addr, err)
		}
		frame, err := GratuitousARP(op, s.mac, addr)
		if err != nil {
			return err
		}
		if err := s.send(frame); err != nil {
			return fmt.Errorf("send gratuitous arp for %s on %s: %w", addr, s.iface, err)
		}
	}
	return nil
}

func (s *GARPSender) send(frame []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return ErrClosed
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: s.ifindex, Halen: 6}
	copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	for {
		err := unix.Sendto(s.fd, frame, 0, sa)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err
	}
}

// Close closes the socket.
func (s *GARPSender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		return fmt.Errorf("close packet socket on %s: %w", s.iface, err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
