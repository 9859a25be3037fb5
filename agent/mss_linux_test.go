package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNamespace runs fn on a thread in ns; sockets fn creates stay in ns.
func inNamespace(t *testing.T, ns netns.NsHandle, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// newClientNS moves the realserver namespace's eth0p into a new namespace
// as the client 192.0.2.100, with a route to the VIP range via the realserver.
func newClientNS(t *testing.T, rs *NetlinkKernel) netns.NsHandle {
	t.Helper()
	name := fmt.Sprintf("rlbag-%d-%d", os.Getpid(), nsSeq.Add(1))
	var ns netns.NsHandle
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatalf("get namespace: %v", err)
		}
		defer orig.Close()
		if ns, err = netns.NewNamed(name); err != nil {
			t.Fatalf("create namespace %s: %v", name, err)
		}
		if err := netns.Set(orig); err != nil {
			t.Fatalf("return to namespace: %v", err)
		}
	}()
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	peer, err := rs.h.LinkByName("eth0p")
	if err != nil {
		t.Fatalf("find eth0p: %v", err)
	}
	if err := rs.h.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatalf("move eth0p: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink in client namespace: %v", err)
	}
	defer h.Close()
	for _, n := range []string{"lo", "eth0p"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatalf("find %s: %v", n, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
	}
	l, _ := h.LinkByName("eth0p")
	addr, _ := netlink.ParseAddr("192.0.2.100/24")
	if err := h.AddrAdd(l, addr); err != nil {
		t.Fatalf("add client address: %v", err)
	}
	_, vips, _ := net.ParseCIDR("198.51.100.0/24")
	if err := h.RouteAdd(&netlink.Route{Dst: vips, Gw: net.ParseIP("192.0.2.11")}); err != nil {
		t.Fatalf("add route to the VIPs: %v", err)
	}
	return ns
}

// TestTUNVIPAdvertisesLoweredMSS connects from a client namespace to a DR
// and a TUN VIP on a realserver configured by the reconciler: the TUN VIP's
// SYN-ACK must advertise 20 bytes less, room for the director's outer header.
func TestTUNVIPAdvertisesLoweredMSS(t *testing.T) {
	rs := newTestNS(t)
	client := newClientNS(t, rs)
	r := newTestReconciler(t, rs, newFakeDecapper(), t.TempDir())
	st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}, {vipTUN, MethodTUN}}})
	if st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	mss := map[netip.Addr]int{}
	for _, vip := range []netip.Addr{vipDR, vipTUN} {
		var lis net.Listener
		if err := inNamespace(t, rs.ns, func() (err error) {
			lis, err = net.Listen("tcp4", netip.AddrPortFrom(vip, 0).String())
			return err
		}); err != nil {
			t.Fatalf("listen on %s: %v", vip, err)
		}
		t.Cleanup(func() { lis.Close() })
		go func() {
			c, err := lis.Accept()
			if err == nil {
				t.Cleanup(func() { c.Close() })
			}
		}()
		var conn net.Conn
		if err := inNamespace(t, client, func() (err error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err = (&net.Dialer{}).DialContext(ctx, "tcp4", lis.Addr().String())
			return err
		}); err != nil {
			t.Fatalf("connect to %s: %v", vip, err)
		}
		t.Cleanup(func() { conn.Close() })
		raw, err := conn.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			mss[vip], serr = unix.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_MAXSEG)
		}); err != nil || serr != nil {
			t.Fatalf("TCP_MAXSEG: %v, %v", err, serr)
		}
	}
	t.Logf("client MSS towards DR VIP %d, towards TUN VIP %d", mss[vipDR], mss[vipTUN])
	if mss[vipTUN] != mss[vipDR]-ipipOverhead {
		t.Errorf("MSS towards TUN VIP = %d, want %d (DR's %d minus the tunnel header)", mss[vipTUN], mss[vipDR]-ipipOverhead, mss[vipDR])
	}
}
