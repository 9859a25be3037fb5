package ha

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func TestGratuitousARPFrame(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	req, err := GratuitousARP(ARPRequest, mac, mustAddr(t, "198.51.100.10"))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06, // ethernet
		0, 1, 0x08, 0, 6, 4, 0, 1, // ARP request
		0x02, 0, 0, 0, 0, 0x01, 198, 51, 100, 10, // sender
		0, 0, 0, 0, 0, 0, 198, 51, 100, 10, // target
	}
	want = append(want, make([]byte, 60-len(want))...)
	if !bytes.Equal(req, want) {
		t.Errorf("request frame\n got % x\nwant % x", req, want)
	}
	rep, err := GratuitousARP(ARPReply, mac, mustAddr(t, "198.51.100.10"))
	if err != nil {
		t.Fatal(err)
	}
	want[21] = 2
	copy(want[32:38], mac)
	if !bytes.Equal(rep, want) {
		t.Errorf("reply frame\n got % x\nwant % x", rep, want)
	}
	if _, err := GratuitousARP(ARPRequest, mac, mustAddr(t, "2001:db8::1")); err == nil {
		t.Error("IPv6 accepted")
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs fn on a thread switched into the named network namespace.
func inNS(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("enter netns %s: %v", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("leave netns %s: %v", name, err)
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// TestGARPSenderNetns sends gratuitous ARP across a veth pair between two
// namespaces, checks the bytes on the wire and that the peer's existing
// neighbour entry moves to the sender's MAC (arp_accept=0).
func TestGARPSenderNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 to set up the namespaces")
	}
	id := os.Getpid() % 100000
	nsA, nsB := fmt.Sprintf("rlbha-%d-a", id), fmt.Sprintf("rlbha-%d-b", id)
	vA, vB := fmt.Sprintf("rlbha%da", id), fmt.Sprintf("rlbha%db", id)
	for _, ns := range []string{nsA, nsB} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run(t, "ip", "link", "add", vA, "netns", nsA, "type", "veth", "peer", "name", vB, "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", "198.51.100.1/24", "dev", vA)
	run(t, "ip", "-n", nsB, "addr", "add", "198.51.100.2/24", "dev", vB)
	run(t, "ip", "-n", nsA, "link", "set", vA, "up")
	run(t, "ip", "-n", nsB, "link", "set", vB, "up")
	run(t, "ip", "netns", "exec", nsB, "sysctl", "-qw", "net.ipv4.conf."+vB+".arp_accept=0")
	run(t, "ip", "-n", nsB, "neigh", "add", "198.51.100.10", "lladdr", "02:00:00:00:00:99", "dev", vB, "nud", "stale")

	var capFD int
	inNS(t, nsB, func() {
		ifi, err := net.InterfaceByName(vB)
		if err != nil {
			t.Fatal(err)
		}
		capFD, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(capFD, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index}); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { unix.Close(capFD) })
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(capFD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}

	var s *GARPSender
	inNS(t, nsA, func() {
		var err error
		if s, err = OpenGARP(vA, true, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { s.Close() })

	ip := mustAddr(t, "198.51.100.10")
	if err := s.Send(context.Background(), ip); err != nil {
		t.Fatal(err)
	}
	for _, op := range []ARPOp{ARPRequest, ARPReply} {
		want, err := GratuitousARP(op, s.MAC(), ip)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		for {
			n, _, err := unix.Recvfrom(capFD, buf, 0)
			if err != nil {
				t.Fatalf("capture op %d: %v", op, err)
			}
			if n >= 14 && bytes.Equal(buf[6:12], s.MAC()) {
				if !bytes.Equal(buf[:n], want) {
					t.Fatalf("op %d on the wire\n got % x\nwant % x", op, buf[:n], want)
				}
				break
			}
		}
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		out := run(t, "ip", "-n", nsB, "neigh", "show", "198.51.100.10", "dev", vB)
		if strings.Contains(out, s.MAC().String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer's neighbour entry not updated to %s: %q", s.MAC(), out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), ip); err == nil {
		t.Error("send after close succeeded")
	}
}
