package dataplane

// Converters between domain types and the BPF wire structs bpf2go
// generates. Addresses and ports sit in the maps in network byte order;
// the generated structs hold them as native integers over those bytes.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// be32 returns the native integer whose memory holds a in network order.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFrom32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func port16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// svcKey is struct svc_key.
type svcKey struct {
	Addr  uint32
	Port  uint16
	Proto uint8
}

func svcKeyToWire(k ServiceKey) svcKey {
	return svcKey{Addr: be32(k.VIP), Port: be16(k.Port), Proto: uint8(k.Proto)}
}

func connKeyToWire(k ConnKey) directorConnKey {
	return directorConnKey{
		Saddr: be32(k.Client.Addr()),
		Daddr: be32(k.VIP.Addr()),
		Sport: be16(k.Client.Port()),
		Dport: be16(k.VIP.Port()),
		Proto: uint8(k.Proto),
	}
}

func connKeyFromWire(w directorConnKey) ConnKey {
	return ConnKey{
		Proto:  Proto(w.Proto),
		Client: netip.AddrPortFrom(addrFrom32(w.Saddr), port16(w.Sport)),
		VIP:    netip.AddrPortFrom(addrFrom32(w.Daddr), port16(w.Dport)),
	}
}

func rnatKeyFor(k directorConnKey, c directorConn) directorRnatKey {
	return directorRnatKey{Saddr: c.RsAddr, Daddr: k.Saddr, Sport: c.RsPort, Dport: k.Sport, Proto: k.Proto}
}

// Connection flags, mirroring CONN_F_* in bpf/lb.h.
const (
	connFlagNAT = 0x1
	connFlagTUN = 0x2
)

func connFlagsOf(m Method) uint8 {
	switch m {
	case NAT:
		return connFlagNAT
	case TUN:
		return connFlagTUN
	}
	return 0
}

func connFromWire(k directorConnKey, c directorConn, clk clock) Conn {
	m := DR
	switch {
	case c.Flags&connFlagNAT != 0:
		m = NAT
	case c.Flags&connFlagTUN != 0:
		m = TUN
	}
	return Conn{
		Key:      connKeyFromWire(k),
		Real:     netip.AddrPortFrom(addrFrom32(c.RsAddr), port16(c.RsPort)),
		Method:   m,
		State:    ConnState(c.State),
		LastSeen: clk.wall(c.LastSeenNs),
	}
}

func eventFromWire(e directorEvent, clk clock) Event {
	c := directorConn{LastSeenNs: e.TsNs, RsAddr: e.RsAddr, RsPort: e.RsPort, State: e.State, Flags: e.Flags}
	return Event{Type: EventType(e.Type), Conn: connFromWire(e.Key, c, clk)}
}

// Real flags, mirroring RS_* in bpf/lb.h.
const (
	realValid = 0x1
	realDrain = 0x2
)

// Owned-address roles, mirroring OWN_* in bpf/lb.h.
const (
	ownFront  = 0x1
	ownInside = 0x2
)

// clock converts between wall time and CLOCK_MONOTONIC nanoseconds, the
// clock of bpf_ktime_get_ns.
type clock struct{}

// MonotonicNow returns CLOCK_MONOTONIC, the clock lease deadlines and
// connection timestamps in the BPF maps use.
func MonotonicNow() time.Duration {
	var ts unix.Timespec
	// CLOCK_MONOTONIC cannot fail on Linux.
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func (clock) mono(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	d := MonotonicNow() + time.Until(t)
	if d < 0 {
		return 0
	}
	return uint64(d)
}

func (clock) wall(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Now().Add(time.Duration(ns) - MonotonicNow())
}

// jiffyClock is how the programs read CLOCK_MONOTONIC: jiffies * tickNs +
// off (modulo 2^64). jiffies advance in step with CLOCK_MONOTONIC, one per
// tick, so the pair needs calibrating once.
type jiffyClock struct {
	tickNs uint64
	off    uint64
}

// calibrateJiffies pairs jiffies with the coarse clock, which is the
// monotonic time of the last tick, and sets off so that the programs'
// clock is never behind the real one: at most two ticks ahead.
func calibrateJiffies(probe *ebpf.Program, samples *ebpf.Map) (jiffyClock, error) {
	var res unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &res); err != nil {
		return jiffyClock{}, fmt.Errorf("read tick length: %w", err)
	}
	tick := uint64(res.Nano())
	if tick == 0 || tick > uint64(100*time.Millisecond) {
		return jiffyClock{}, fmt.Errorf("read tick length: %d ns: %w", tick, ErrInvalid)
	}
	in := make([]byte, 64) // XDP test runs want at least an Ethernet header
	var best int64
	for i := range 5 {
		if _, err := probe.Run(&ebpf.RunOptions{Data: in}); err != nil {
			return jiffyClock{}, fmt.Errorf("run clock probe: %w", err)
		}
		var cs directorClockSample
		if err := samples.Lookup(uint32(0), &cs); err != nil {
			return jiffyClock{}, fmt.Errorf("read clock sample: %w", err)
		}
		// A tick between the probe's two reads moves a sample one tick
		// later; the latest keeps the clock from ever running behind.
		off := int64(cs.CoarseNs - cs.Jiffies*tick)
		if i == 0 || off > best {
			best = off
		}
	}
	return jiffyClock{tickNs: tick, off: uint64(best) + tick}, nil
}
