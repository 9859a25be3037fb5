package dataplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/raftlb/raftlb/dataplane/internal/netnslab"
)

// newLab builds a lab for a privileged test that needs only ip(8).
func newLab(t *testing.T, name string) *netnslab.Lab {
	t.Helper()
	needRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("lab needs ip: %v", err)
	}
	return netnslab.New(t, fmt.Sprintf("rlb%s%d", name, os.Getpid()%100000))
}

// labDataplane opens a dataplane inside a lab namespace and runs it until
// the returned stop (also called in t.Cleanup), which closes it.
func labDataplane(t *testing.T, lab *netnslab.Lab, ns string, cfg Config) (*Dataplane, func()) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var d *Dataplane
	err := lab.Do(ns, func() (err error) {
		d, err = Open(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("open in %s: %v", ns, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, func([]Event) {}) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	t.Cleanup(stop)
	return d, stop
}

// labNetlink is a netlink handle inside a lab namespace.
func labNetlink(t *testing.T, lab *netnslab.Lab, ns string) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromName(lab.NS(ns))
	if err != nil {
		t.Fatalf("open netns %s: %v", ns, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink in %s: %v", ns, err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// eventually polls cond until it holds, failing the test after a deadline.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s", what, state)
		}
		time.Sleep(10 * time.Millisecond) // polling the state Run converges
	}
}

// neighView is what the tests check of a neighbour entry.
type neighView struct {
	present, managed, permanent bool
	mac                         string
}

func (v neighView) String() string {
	if !v.present {
		return "absent"
	}
	return fmt.Sprintf("mac=%q managed=%t permanent=%t", v.mac, v.managed, v.permanent)
}

func viewNeighbours(t *testing.T, nl *netlink.Handle, link int, addrs ...netip.Addr) map[netip.Addr]neighView {
	t.Helper()
	ns, err := nl.NeighList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list neighbours: %v", err)
	}
	out := make(map[netip.Addr]neighView, len(addrs))
	for _, a := range addrs {
		out[a] = neighView{}
	}
	for _, n := range ns {
		a, _ := netip.AddrFromSlice(n.IP.To4())
		if _, ok := out[a]; !ok {
			continue
		}
		v := neighView{
			present:   true,
			managed:   n.FlagsExt&netlink.NTF_EXT_MANAGED != 0,
			permanent: n.State&netlink.NUD_PERMANENT != 0,
		}
		if usable(n) {
			v.mac = n.HardwareAddr.String()
		}
		out[a] = v
	}
	return out
}

// TestNeighbourEntries: the director keeps next hops resolved with
// managed entries while realservers need them and removes the entries it
// added once they do not, on Run's refresh and at Close; an entry it found
// (the test's own) is left as it was.
func TestNeighbourEntries(t *testing.T) {
	lab := newLab(t, "nb")
	lab.Host("d", "192.0.2.1/24", "")
	lab.Host("r1", "192.0.2.11/24", "")
	lab.Host("r3", "192.0.2.13/24", "")
	var (
		r1   = netip.MustParseAddr("192.0.2.11") // no entry: the director adds one
		perm = netip.MustParseAddr("192.0.2.12") // the test's permanent entry, no host
		dyn  = netip.MustParseAddr("192.0.2.13") // the test's dynamic entry
		gone = netip.MustParseAddr("192.0.2.14") // no host: stays unresolved
	)
	nl := labNetlink(t, lab, "d")
	eth0, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	link := eth0.Attrs().Index
	r3, err := labNetlink(t, lab, "r3").LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	r3MAC := r3.Attrs().HardwareAddr.String()
	const permMAC = "02:00:00:00:00:12"
	add := func(a netip.Addr, mac string, state int) {
		t.Helper()
		hw, _ := net.ParseMAC(mac)
		n := &netlink.Neigh{LinkIndex: link, Family: netlink.FAMILY_V4, IP: net.IP(a.AsSlice()), HardwareAddr: hw, State: state}
		if err := nl.NeighSet(n); err != nil {
			t.Fatalf("set neighbour %s: %v", a, err)
		}
	}
	add(perm, permMAC, netlink.NUD_PERMANENT)
	add(dyn, r3MAC, netlink.NUD_STALE)

	d, stop := labDataplane(t, lab, "d", Config{FrontIface: "eth0", NeighInterval: 20 * time.Millisecond})
	vip := ServiceKey{VIP: netip.MustParseAddr("198.51.100.1"), Port: 80, Proto: TCP}
	apply := func(addrs ...netip.Addr) {
		t.Helper()
		var rs []Realserver
		for _, a := range addrs {
			rs = append(rs, Realserver{Addr: a, Port: 80, Weight: 1, Method: DR})
		}
		mustApply(t, d, State{Services: []Service{{ServiceKey: vip, Realservers: rs}}})
	}
	want := func(what string, w map[netip.Addr]neighView) {
		t.Helper()
		var addrs []netip.Addr
		for a := range w {
			addrs = append(addrs, a)
		}
		eventually(t, what, func() (bool, string) {
			got := viewNeighbours(t, nl, link, addrs...)
			for a, v := range w {
				g := got[a]
				if v.present != g.present || v.managed != g.managed || v.permanent != g.permanent ||
					(v.mac != "" && v.mac != g.mac) {
					return false, fmt.Sprint(got)
				}
			}
			return true, ""
		})
	}
	permanent := neighView{present: true, permanent: true, mac: permMAC}

	apply(r1, perm, dyn)
	want("entries while realservers need them", map[netip.Addr]neighView{
		r1:   {present: true, managed: true},
		perm: permanent,
		dyn:  {present: true, managed: true, mac: r3MAC},
	})
	eventually(t, "next hops resolved", func() (bool, string) {
		u := d.Unresolved()
		return len(u) == 0, fmt.Sprint(u)
	})

	// The next refresh releases what the removed realservers needed.
	apply(perm)
	want("entries after the realservers left", map[netip.Addr]neighView{
		r1:   {},
		perm: permanent,
		dyn:  {present: true, mac: r3MAC},
	})

	apply(r1, perm, gone)
	want("entries of realservers back", map[netip.Addr]neighView{
		r1:   {present: true, managed: true},
		gone: {present: true, managed: true},
	})
	// An administrator takes one of the director's entries over: it is
	// theirs now, and Close must leave it.
	add(gone, "02:00:00:00:00:14", netlink.NUD_PERMANENT)
	stop()
	got := viewNeighbours(t, nl, link, r1, perm, dyn, gone)
	for a, w := range map[netip.Addr]neighView{
		r1:   {},
		perm: permanent,
		dyn:  {present: true, mac: r3MAC},
		gone: {present: true, permanent: true, mac: "02:00:00:00:00:14"},
	} {
		if got[a] != w {
			t.Errorf("after Close, %s: got %v, want %v", a, got[a], w)
		}
	}
}
