package failover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raftlb/raftlb/deploy/lab"
)

// arpFrame is an ARP packet seen on the client's link whose sender is a VIP: a reply
// to the watcher's probes or a gratuitous announcement.
type arpFrame struct {
	at  time.Time
	op  uint16
	mac string
	vip string
}

// arpWatch records, on the client's front link, every ARP packet a host sends for a
// VIP, and keeps asking for the VIPs so that whoever answers shows up: the record of
// who answered for a VIP when.
type arpWatch struct {
	fd       int
	ifindex  int
	mac      net.HardwareAddr
	ip       netip.Addr
	vips     map[netip.Addr]string
	interval time.Duration

	mu     sync.Mutex
	frames []arpFrame
	stop   chan struct{}
	wg     sync.WaitGroup
}

// watchARP opens an AF_PACKET socket in the client's namespace and starts recording,
// probing each VIP every interval.
func (l *haLab) watchARP(interval time.Duration, vips ...string) *arpWatch {
	l.tb.Helper()
	client, err := lab.LookupHost("client")
	if err != nil {
		l.tb.Fatal(err)
	}
	w := &arpWatch{fd: -1, ip: client.Front, vips: make(map[netip.Addr]string), interval: interval, stop: make(chan struct{})}
	for _, v := range vips {
		w.vips[netip.MustParseAddr(v)] = v
	}
	err = l.InNS("client", func() error {
		ifi, err := net.InterfaceByName(lab.FrontIface)
		if err != nil {
			return fmt.Errorf("find %s: %w", lab.FrontIface, err)
		}
		w.ifindex, w.mac = ifi.Index, ifi.HardwareAddr
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return fmt.Errorf("open packet socket: %w", err)
		}
		w.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind packet socket: %w", err)
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("set receive timeout: %w", err)
		}
		return nil
	})
	if err != nil {
		if w.fd >= 0 {
			unix.Close(w.fd)
		}
		l.tb.Fatalf("watch arp: %v", err)
	}
	w.wg.Go(w.read)
	w.wg.Go(w.probe)
	l.tb.Cleanup(w.close)
	return w
}

func (w *arpWatch) close() {
	select {
	case <-w.stop:
		return
	default:
		close(w.stop)
	}
	w.wg.Wait()
	unix.Close(w.fd)
}

func (w *arpWatch) read() {
	buf := make([]byte, 1600)
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		now := time.Now()
		if n < 42 || binary.BigEndian.Uint16(buf[12:14]) != unix.ETH_P_ARP {
			continue
		}
		a := buf[14:42]
		spa := netip.AddrFrom4([4]byte(a[14:18]))
		vip, ok := w.vips[spa]
		if !ok {
			continue
		}
		f := arpFrame{at: now, op: binary.BigEndian.Uint16(a[6:8]), mac: net.HardwareAddr(a[8:14]).String(), vip: vip}
		w.mu.Lock()
		w.frames = append(w.frames, f)
		w.mu.Unlock()
	}
}

// probe asks "who has VIP" for every VIP every interval, as the client's kernel would.
func (w *arpWatch) probe() {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: w.ifindex, Halen: 6}
	copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		for vip := range w.vips {
			_ = unix.Sendto(w.fd, arpRequest(w.mac, w.ip, vip), 0, sa) // a lost probe is one sample less
		}
	}
}

// arpRequest builds "who has target, tell ip at mac".
func arpRequest(mac net.HardwareAddr, ip, target netip.Addr) []byte {
	b := make([]byte, 60)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], mac)
	binary.BigEndian.PutUint16(b[12:14], unix.ETH_P_ARP)
	a := b[14:]
	binary.BigEndian.PutUint16(a[0:2], 1)
	binary.BigEndian.PutUint16(a[2:4], unix.ETH_P_IP)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], 1)
	copy(a[8:14], mac)
	ip4, t4 := ip.As4(), target.As4()
	copy(a[14:18], ip4[:])
	copy(a[24:28], t4[:])
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// answerRun is a stretch of time in which one MAC, and no other, answered for a VIP.
type answerRun struct {
	mac         string
	first, last time.Time
	frames      int
}

func (r answerRun) String() string {
	return fmt.Sprintf("%s %s..%s (%d)", r.mac, r.first.Format("15:04:05.000"), r.last.Format("15:04:05.000"), r.frames)
}

// runs returns, for vip, the frames seen in [from, to) collapsed into runs of one MAC.
func (w *arpWatch) runs(vip string, from, to time.Time) []answerRun {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []answerRun
	for _, f := range w.frames {
		if f.vip != vip || f.at.Before(from) || !f.at.Before(to) {
			continue
		}
		if n := len(out); n > 0 && out[n-1].mac == f.mac {
			out[n-1].last = f.at
			out[n-1].frames++
			continue
		}
		out = append(out, answerRun{mac: f.mac, first: f.at, last: f.at, frames: 1})
	}
	return out
}

// gratuitous returns the gratuitous announcements (unsolicited, as the directors send
// them: requests for the VIP itself) for vip from mac in [from, to).
func (w *arpWatch) gratuitous(vip, mac string, from, to time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, f := range w.frames {
		if f.vip == vip && f.mac == mac && f.op == 1 && !f.at.Before(from) && f.at.Before(to) {
			n++
		}
	}
	return n
}

// checkNoOverlap fails the test if, in [from, to), two MACs answered for a VIP in
// overlapping times: each MAC must answer in one stretch, never interleaved with
// another's. It returns the runs, for the log.
func (w *arpWatch) checkNoOverlap(tb testing.TB, from, to time.Time, vips ...string) map[string][]answerRun {
	tb.Helper()
	out := make(map[string][]answerRun)
	for _, vip := range vips {
		rs := w.runs(vip, from, to)
		out[vip] = rs
		seen := make(map[string]bool)
		for _, r := range rs {
			if seen[r.mac] {
				var s []string
				for _, r := range rs {
					s = append(s, r.String())
				}
				tb.Errorf("two directors answered ARP for %s in overlapping times: %s", vip, strings.Join(s, ", "))
				break
			}
			seen[r.mac] = true
		}
	}
	return out
}
