package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var nsSeq atomic.Int32

// newTestNS creates a network namespace "rlbag-…" shaped like a lab
// realserver (eth0 192.0.2.11/24 with a default route via 192.0.2.254,
// eth1 203.0.113.11/24) and returns a Kernel working in it.
func newTestNS(t *testing.T) *NetlinkKernel {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root")
	}
	name := fmt.Sprintf("rlbag-%d-%d", os.Getpid(), nsSeq.Add(1))
	ns := func() netns.NsHandle {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatalf("get namespace: %v", err)
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			t.Fatalf("create namespace %s: %v", name, err)
		}
		if err := netns.Set(orig); err != nil {
			t.Fatalf("return to namespace: %v", err)
		}
		return ns
	}()
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	k, err := newKernelAt(ns)
	if err != nil {
		t.Fatalf("kernel: %v", err)
	}
	t.Cleanup(k.Close)
	h := k.h
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
	for _, l := range []struct{ name, addr string }{{"eth0", "192.0.2.11/24"}, {"eth1", "203.0.113.11/24"}} {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.name}, PeerName: l.name + "p"}); err != nil {
			t.Fatalf("add veth %s: %v", l.name, err)
		}
		for _, n := range []string{l.name, l.name + "p"} {
			link, err := h.LinkByName(n)
			if err != nil {
				t.Fatalf("find %s: %v", n, err)
			}
			if err := h.LinkSetUp(link); err != nil {
				t.Fatalf("set %s up: %v", n, err)
			}
		}
		link, _ := h.LinkByName(l.name)
		addr, _ := netlink.ParseAddr(l.addr)
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("add %s to %s: %v", l.addr, l.name, err)
		}
	}
	eth0, _ := h.LinkByName("eth0")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("192.0.2.254")}); err != nil {
		t.Fatalf("add default route: %v", err)
	}
	return k
}

// realState is what a kernel snapshot compares: everything the agent could touch.
type realState struct {
	Addrs   map[string][]netip.Prefix
	Up      map[string]bool
	Sysctls map[string]string
	Rules   []string
	Routes  []Route
	Qdiscs  []string
}

func snapshotKernel(t *testing.T, k *NetlinkKernel) realState {
	t.Helper()
	s := realState{Addrs: map[string][]netip.Prefix{}, Up: map[string]bool{}, Sysctls: map[string]string{}}
	links, err := k.Links()
	if err != nil {
		t.Fatalf("links: %v", err)
	}
	for _, l := range links {
		s.Addrs[l.Name] = l.Addrs
		s.Up[l.Name] = l.Up
		for _, sc := range []string{"arp_ignore", "arp_announce", "rp_filter"} {
			for _, ifc := range []string{"all", "default", l.Name} {
				n := "net/ipv4/conf/" + ifc + "/" + sc
				v, err := k.Sysctl(n)
				if err != nil {
					t.Fatalf("sysctl: %v", err)
				}
				s.Sysctls[n] = v
			}
		}
	}
	rules, err := k.h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	for _, r := range rules {
		s.Rules = append(s.Rules, r.String())
	}
	// Table 0 lists every table.
	if s.Routes, err = k.Routes(0); err != nil {
		t.Fatalf("routes: %v", err)
	}
	slices.SortFunc(s.Routes, func(a, b Route) int { return cmpString(a.key(), b.key()) })
	qs, err := k.h.QdiscList(nil)
	if err != nil {
		t.Fatalf("qdiscs: %v", err)
	}
	for _, q := range qs {
		s.Qdiscs = append(s.Qdiscs, fmt.Sprintf("%d %s", q.Attrs().LinkIndex, q.Type()))
	}
	slices.Sort(s.Qdiscs)
	return s
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestKernelIPIPNotSupported(t *testing.T) {
	k := newTestNS(t)
	err := k.AddIPIPTunnel(DefaultTunnelName)
	if err == nil {
		t.Logf("this kernel has ipip: %s created", DefaultTunnelName)
		l, lerr := k.LinkByName(DefaultTunnelName)
		if lerr != nil || !l.Up {
			t.Errorf("tunnel after create: %+v, %v; want it up", l, lerr)
		}
		return
	}
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("AddIPIPTunnel: %v, want success or ErrNotSupported", err)
	}
	t.Logf("as expected on a kernel without ipip: %v", err)
}

// TestReconcileRealKernel applies DR, TUN and NAT config in a namespace, reads
// it back from the kernel, repairs drift, survives a restart and removes it
// all, leaving the namespace exactly as it found it.
func TestReconcileRealKernel(t *testing.T) {
	natRule := Rule{Priority: DefaultRulePriority, Src: vipPrefix(natSrc), Proto: ProtoTCP, Sport: 80, Table: DefaultNATTable}
	k := newTestNS(t)
	before := snapshotKernel(t, k)
	dir := t.TempDir()
	dec := newFakeDecapper()
	r := newTestReconciler(t, k, dec, dir)
	eth0, err := k.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	eth1, err := k.LinkByName("eth1")
	if err != nil {
		t.Fatal(err)
	}
	d := Desired{
		Generation:    1,
		VIPs:          []VIP{{vipDR, MethodDR}, {vipTUN, MethodTUN}, {vipNAT, MethodNAT}},
		NATSources:    []netip.Addr{natSrc},
		NATServices:   []NATService{{natSrc, ProtoTCP, 80}},
		NATGateway:    natGw,
		TunnelSources: []netip.Addr{dir1},
	}
	st := r.reconcile(d)
	if st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	for _, v := range st.VIPs {
		if !v.Applied {
			t.Errorf("vip %s not applied: %s", v.VIP, v.Err)
		}
	}

	// Read back from the kernel.
	lo, err := k.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []netip.Addr{vipDR, vipTUN} {
		if !slices.Contains(lo.Addrs, vipPrefix(v)) {
			t.Errorf("lo addresses %v lack %s/32", lo.Addrs, v)
		}
	}
	if slices.Contains(lo.Addrs, vipPrefix(vipNAT)) {
		t.Errorf("NAT VIP %s is on lo", vipNAT)
	}
	wantSysctls := tunSysctls()
	switch st.DecapMode {
	case DecapModeBPF:
		if diff := cmp.Diff(map[string][]netip.Addr{"eth0": {dir1}}, dec.snapshot(), viewOpts); diff != "" {
			t.Errorf("bpf decap (-want +got):\n%s", diff)
		}
	case DecapModeIPIP:
		t.Logf("this kernel has ipip")
		wantSysctls["net/ipv4/conf/"+DefaultTunnelName+"/rp_filter"] = "2"
	default:
		t.Errorf("decap mode %q", st.DecapMode)
	}
	for n, want := range wantSysctls {
		if got, err := k.Sysctl(n); err != nil || (got != want && !(strings.HasSuffix(n, "/rp_filter") && relaxed(got))) {
			t.Errorf("sysctl %s = %q, %v; want %q", n, got, err, want)
		}
	}
	rules, err := k.Rules()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []Rule{
		{Priority: DefaultRulePriority, Src: vipPrefix(vipTUN), Table: DefaultMSSTable},
		natRule,
	} {
		if !slices.Contains(rules, want) {
			t.Errorf("rules %v lack %s", rules, want)
		}
	}
	if slices.ContainsFunc(rules, func(r Rule) bool { return r.Table == DefaultNATTable && r.Sport == 0 }) {
		t.Errorf("rules %v send all of %s's traffic to the gateway", rules, natSrc)
	}
	mss, err := k.Routes(DefaultMSSTable)
	if err != nil {
		t.Fatal(err)
	}
	wantMSS := []Route{
		{Table: DefaultMSSTable, Dst: any4, Gw: netip.MustParseAddr("192.0.2.254"), LinkIndex: eth0.Index, AdvMSS: 1440},
		{Table: DefaultMSSTable, Dst: front, LinkIndex: eth0.Index, AdvMSS: 1440},
	}
	if diff := cmp.Diff(wantMSS, mss, viewOpts, sortRoutes); diff != "" {
		t.Errorf("table %d (-want +got):\n%s", DefaultMSSTable, diff)
	}
	nat, err := k.Routes(DefaultNATTable)
	if err != nil {
		t.Fatal(err)
	}
	wantNAT := []Route{
		{Table: DefaultNATTable, Dst: any4, Gw: natGw, LinkIndex: eth1.Index},
		{Table: DefaultNATTable, Dst: back, LinkIndex: eth1.Index},
	}
	if diff := cmp.Diff(wantNAT, nat, viewOpts, sortRoutes); diff != "" {
		t.Errorf("table %d (-want +got):\n%s", DefaultNATTable, diff)
	}
	// The kernel answers route queries the way the design wants: replies from
	// a TUN VIP get the lowered MSS, replies of the NAT service the gateway,
	// and the NAT source's other traffic the main table's default route.
	assertRouteGet(t, k, vipTUN, netip.MustParseAddr("192.0.2.100"), netip.Addr{}, 1440)
	client := netip.MustParseAddr("192.0.2.100")
	mainGw := netip.Addr{} // the client is on-link in the main table
	assertRouteGet(t, k, natSrc, client, mainGw, 0)
	for _, q := range []struct {
		proto string
		sport uint16
		want  netip.Addr
	}{
		{"tcp", 80, natGw},
		{"tcp", 40000, mainGw},
		{"udp", 80, mainGw},
	} {
		if got := ipRouteGetGw(t, k, natSrc, client, q.proto, q.sport); got != q.want {
			t.Errorf("route get %s from %s ipproto %s sport %d: via %v, want via %v", client, natSrc, q.proto, q.sport, got, q.want)
		}
	}
	assertRouteGet(t, k, netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.100"), netip.Addr{}, 0)

	applied := snapshotKernel(t, k)

	// Drift: someone removes a VIP, a rule and a route and flips a sysctl.
	if err := k.DelAddr("lo", vipPrefix(vipDR)); err != nil {
		t.Fatal(err)
	}
	if err := k.SetSysctl("net/ipv4/conf/eth0/arp_ignore", "0"); err != nil {
		t.Fatal(err)
	}
	if err := k.DelRule(natRule); err != nil {
		t.Fatal(err)
	}
	if err := k.DelRoute(Route{Table: DefaultMSSTable, Dst: front}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(applied, snapshotKernel(t, k), viewOpts); diff == "" {
		t.Fatal("disturbing the kernel changed nothing")
	}
	if st := r.reconcile(d); st.Err != nil {
		t.Fatalf("reconcile after drift: %v", st.Err)
	}
	if diff := cmp.Diff(applied, snapshotKernel(t, k), viewOpts); diff != "" {
		t.Errorf("kernel after repair (-want +got):\n%s", diff)
	}

	// A restarted agent owns the same objects and changes nothing.
	r = newTestReconciler(t, k, dec, dir)
	last, _ := r.lastDesired()
	if st := r.reconcile(last); st.Err != nil {
		t.Fatalf("reconcile after restart: %v", st.Err)
	}
	if diff := cmp.Diff(applied, snapshotKernel(t, k), viewOpts); diff != "" {
		t.Errorf("kernel after restart (-want +got):\n%s", diff)
	}

	// Removing the TUN VIP removes exactly its rule, address and MSS table.
	d2 := d
	d2.Generation = 2
	d2.VIPs = []VIP{{vipDR, MethodDR}, {vipNAT, MethodNAT}}
	if st := r.reconcile(d2); st.Err != nil {
		t.Fatalf("reconcile without tun: %v", st.Err)
	}
	if mss, _ := k.Routes(DefaultMSSTable); len(mss) != 0 {
		t.Errorf("table %d after removing the TUN VIP: %v", DefaultMSSTable, mss)
	}
	if len(dec.snapshot()) != 0 {
		t.Errorf("decap still attached: %v", dec.snapshot())
	}

	// Cleanup restores the namespace exactly.
	if err := cleanup(k, dir, dec, testLogger(t)); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if diff := cmp.Diff(before, snapshotKernel(t, k), viewOpts); diff != "" {
		t.Errorf("kernel after cleanup (-before +after):\n%s", diff)
	}
}

// ipRouteGetGw asks the kernel, with ip(8) run in k's namespace, for the
// gateway of a reply from src:sport to dst over proto; netlink's RouteGet has
// no protocol or port selectors.
func ipRouteGetGw(t *testing.T, k *NetlinkKernel, src, dst netip.Addr, proto string, sport uint16) netip.Addr {
	t.Helper()
	var out []byte
	err := k.inNS(func() error {
		var err error
		out, err = exec.Command("ip", "-j", "route", "get", dst.String(), "from", src.String(),
			"ipproto", proto, "sport", fmt.Sprint(sport)).Output()
		return err
	})
	if err != nil {
		t.Fatalf("ip route get %s from %s ipproto %s sport %d: %v", dst, src, proto, sport, err)
	}
	var rs []struct {
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal(out, &rs); err != nil || len(rs) != 1 {
		t.Fatalf("ip route get: %q: %v", out, err)
	}
	gw, _ := netip.ParseAddr(rs[0].Gateway)
	return gw
}

var sortRoutes = cmp.Transformer("sortRoutes", func(in []Route) []Route {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b Route) int { return cmpString(a.key(), b.key()) })
	return out
})

// assertRouteGet asks the kernel for the route from src to dst, as a reply
// would take it, and checks the gateway and advertised MSS.
func assertRouteGet(t *testing.T, k *NetlinkKernel, src, dst, wantGw netip.Addr, wantMSS int) {
	t.Helper()
	rs, err := k.h.RouteGetWithOptions(dst.AsSlice(), &netlink.RouteGetOptions{SrcAddr: src.AsSlice()})
	if err != nil {
		t.Errorf("route get %s from %s: %v", dst, src, err)
		return
	}
	if len(rs) != 1 {
		t.Errorf("route get %s from %s: %d routes", dst, src, len(rs))
		return
	}
	gw, _ := netip.AddrFromSlice(rs[0].Gw.To4())
	if rs[0].Gw == nil {
		gw = netip.Addr{}
	}
	if gw != wantGw || rs[0].AdvMSS != wantMSS {
		t.Errorf("route get %s from %s: via %v advmss %d; want via %v advmss %d", dst, src, gw, rs[0].AdvMSS, wantGw, wantMSS)
	}
}
