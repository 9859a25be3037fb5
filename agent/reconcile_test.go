package agent

import (
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	vipDR  = netip.MustParseAddr("198.51.100.10")
	vipTUN = netip.MustParseAddr("198.51.100.20")
	vipNAT = netip.MustParseAddr("198.51.100.30")
	dir1   = netip.MustParseAddr("192.0.2.1")
	dir2   = netip.MustParseAddr("192.0.2.2")
	natSrc = netip.MustParseAddr("203.0.113.11")
	natGw  = netip.MustParseAddr("203.0.113.254")
)

func testReconcilerConfig() reconcilerConfig {
	return reconcilerConfig{FacingIfaces: []string{"eth0"}, NATTable: DefaultNATTable, MSSTable: DefaultMSSTable, RulePriority: DefaultRulePriority, TunnelName: DefaultTunnelName}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}

func newTestReconciler(t *testing.T, k Kernel, d Decapper, dir string) *reconciler {
	t.Helper()
	var dec Decapper
	if d != nil {
		dec = d
	}
	r, err := newReconciler(k, dec, stateStore{dir: dir}, testReconcilerConfig(), testLogger(t))
	if err != nil {
		t.Fatalf("newReconciler: %v", err)
	}
	return r
}

// view is the part of the kernel the agent touches, relative to a baseline.
type view struct {
	LoAddrs []netip.Prefix
	// Sysctls lists only values that differ from the baseline.
	Sysctls  map[string]string
	NewLinks []string
	Rules    []Rule
	Routes   []Route
	Decap    map[string][]netip.Addr
}

func viewOf(base kernelState, k *fakeKernel, d *fakeDecapper) view {
	s := k.snapshot()
	v := view{LoAddrs: s.Links["lo"].Addrs, Sysctls: map[string]string{}, Rules: s.Rules}
	for n, val := range s.Sysctls {
		if base.Sysctls[n] != val {
			v.Sysctls[n] = val
		}
	}
	for n := range s.Links {
		if _, ok := base.Links[n]; !ok {
			v.NewLinks = append(v.NewLinks, n)
		}
	}
	for _, r := range s.Routes {
		if r.Table != MainTable {
			v.Routes = append(v.Routes, r)
		}
	}
	if d != nil {
		v.Decap = d.snapshot()
	}
	return v
}

var viewOpts = cmp.Options{
	cmpopts.EquateEmpty(),
	cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}),
	cmpopts.SortSlices(func(a, b Route) bool { return a.key() < b.key() }),
	cmpopts.SortSlices(func(a, b Rule) bool { return a.String() < b.String() }),
	cmpopts.SortSlices(func(a, b netip.Prefix) bool { return a.String() < b.String() }),
}

// statusView is a Status without error texts, for cmp.
type statusView struct {
	Generation uint64
	DecapMode  string
	Applied    map[netip.Addr]bool
	OK         bool
}

func viewStatus(st Status) statusView {
	v := statusView{Generation: st.Generation, DecapMode: st.DecapMode, Applied: map[netip.Addr]bool{}, OK: st.Err == nil}
	for _, s := range st.VIPs {
		v.Applied[s.VIP] = s.Applied
	}
	return v
}

var (
	lo127 = netip.MustParsePrefix("127.0.0.1/8")
	any4  = netip.MustParsePrefix("0.0.0.0/0")
	front = netip.MustParsePrefix("192.0.2.0/24")
	back  = netip.MustParsePrefix("203.0.113.0/24")
)

func arpSysctls() map[string]string {
	return map[string]string{
		"net/ipv4/conf/all/arp_ignore":    "1",
		"net/ipv4/conf/all/arp_announce":  "2",
		"net/ipv4/conf/eth0/arp_ignore":   "1",
		"net/ipv4/conf/eth0/arp_announce": "2",
	}
}

func tunSysctls() map[string]string {
	m := arpSysctls()
	m["net/ipv4/conf/all/rp_filter"] = "2"
	m["net/ipv4/conf/eth0/rp_filter"] = "2"
	return m
}

// TestReconcileSteps drives one reconciler through a realserver's life in
// order: each step may disturb the kernel first, then runs one pass.
func TestReconcileSteps(t *testing.T) {
	k := newFakeKernel()
	dec := newFakeDecapper()
	base := k.snapshot()
	r := newTestReconciler(t, k, dec, t.TempDir())
	eth0 := base.Links["eth0"].Index
	eth1 := base.Links["eth1"].Index
	tunDesired := Desired{Generation: 3, VIPs: []VIP{{vipDR, MethodDR}, {vipTUN, MethodTUN}}, TunnelSources: []netip.Addr{dir1, dir2}}
	tunView := view{
		LoAddrs: []netip.Prefix{lo127, vipPrefix(vipDR), vipPrefix(vipTUN)},
		Sysctls: tunSysctls(),
		Rules:   []Rule{{Priority: DefaultRulePriority, Src: vipPrefix(vipTUN), Table: DefaultMSSTable}},
		Routes: []Route{
			{Table: DefaultMSSTable, Dst: front, LinkIndex: eth0, AdvMSS: 1440},
			{Table: DefaultMSSTable, Dst: any4, Gw: netip.MustParseAddr("192.0.2.254"), LinkIndex: eth0, AdvMSS: 1440},
		},
		Decap: map[string][]netip.Addr{"eth0": {dir1, dir2}},
	}
	steps := []struct {
		name       string
		disturb    func()
		desired    Desired
		wantView   view
		wantStatus statusView
		noWrites   bool
	}{
		{
			name:       "dr vip on lo with arp fenced",
			desired:    Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}}},
			wantView:   view{LoAddrs: []netip.Prefix{lo127, vipPrefix(vipDR)}, Sysctls: arpSysctls()},
			wantStatus: statusView{Generation: 1, Applied: map[netip.Addr]bool{vipDR: true}, OK: true},
		},
		{
			name:       "same config again changes nothing",
			desired:    Desired{Generation: 2, VIPs: []VIP{{vipDR, MethodDR}}},
			wantView:   view{LoAddrs: []netip.Prefix{lo127, vipPrefix(vipDR)}, Sysctls: arpSysctls()},
			wantStatus: statusView{Generation: 2, Applied: map[netip.Addr]bool{vipDR: true}, OK: true},
			noWrites:   true,
		},
		{
			name:       "tun vip without ipip falls back to bpf decap",
			desired:    tunDesired,
			wantView:   tunView,
			wantStatus: statusView{Generation: 3, DecapMode: DecapModeBPF, Applied: map[netip.Addr]bool{vipDR: true, vipTUN: true}, OK: true},
		},
		{
			name: "drift is repaired",
			disturb: func() {
				k.DelAddr("lo", vipPrefix(vipDR))
				k.SetSysctl("net/ipv4/conf/all/arp_ignore", "0")
				k.SetSysctl("net/ipv4/conf/eth0/rp_filter", "1")
				k.DelRule(Rule{Priority: DefaultRulePriority, Src: vipPrefix(vipTUN), Table: DefaultMSSTable})
				k.DelRoute(Route{Table: DefaultMSSTable, Dst: any4})
				dec.Detach("eth0", false)
			},
			desired:    tunDesired,
			wantView:   tunView,
			wantStatus: statusView{Generation: 3, DecapMode: DecapModeBPF, Applied: map[netip.Addr]bool{vipDR: true, vipTUN: true}, OK: true},
		},
		{
			name:       "repaired state is stable",
			desired:    tunDesired,
			wantView:   tunView,
			wantStatus: statusView{Generation: 3, DecapMode: DecapModeBPF, Applied: map[netip.Addr]bool{vipDR: true, vipTUN: true}, OK: true},
			noWrites:   true,
		},
		{
			name: "switch to nat removes dr and tun, adds the return route",
			desired: Desired{Generation: 4, VIPs: []VIP{{vipNAT, MethodNAT}}, NATSources: []netip.Addr{natSrc}, NATGateway: natGw,
				NATServices: []NATService{{natSrc, ProtoTCP, 80}, {natSrc, ProtoUDP, 53}}},
			wantView: view{
				LoAddrs: []netip.Prefix{lo127},
				Rules: []Rule{
					{Priority: DefaultRulePriority, Src: vipPrefix(natSrc), Proto: ProtoTCP, Sport: 80, Table: DefaultNATTable},
					{Priority: DefaultRulePriority, Src: vipPrefix(natSrc), Proto: ProtoUDP, Sport: 53, Table: DefaultNATTable},
				},
				Routes: []Route{
					{Table: DefaultNATTable, Dst: any4, Gw: natGw, LinkIndex: eth1},
					{Table: DefaultNATTable, Dst: back, LinkIndex: eth1},
				},
			},
			wantStatus: statusView{Generation: 4, Applied: map[netip.Addr]bool{vipNAT: true}, OK: true},
		},
		{
			name:       "empty config removes everything",
			desired:    Desired{Generation: 5},
			wantView:   view{LoAddrs: []netip.Prefix{lo127}},
			wantStatus: statusView{Generation: 5, Applied: map[netip.Addr]bool{}, OK: true},
		},
	}
	for _, s := range steps {
		if s.disturb != nil {
			s.disturb()
		}
		k.takeWrites()
		st := r.reconcile(s.desired)
		if st.Err != nil {
			t.Logf("step %q: status error: %v", s.name, st.Err)
		}
		if diff := cmp.Diff(s.wantStatus, viewStatus(st), viewOpts); diff != "" {
			t.Errorf("step %q: status (-want +got):\n%s", s.name, diff)
		}
		if diff := cmp.Diff(s.wantView, viewOf(base, k, dec), viewOpts); diff != "" {
			t.Errorf("step %q: kernel (-want +got):\n%s", s.name, diff)
		}
		if w := k.takeWrites(); s.noWrites && len(w) > 0 {
			t.Errorf("step %q: wrote to the kernel: %q", s.name, w)
		}
	}
	if diff := cmp.Diff(base, k.snapshot(), viewOpts); diff != "" {
		t.Errorf("kernel after removing everything (-before +after):\n%s", diff)
	}
}

// TestReconcileNATRulesMatchServices: the NAT return rules match only the
// replies of the realserver's NAT services, so its own traffic from the same
// address keeps the main table. A config from a director that lists no
// services keeps the whole-source rule, and is narrowed once it does.
func TestReconcileNATRulesMatchServices(t *testing.T) {
	k := newFakeKernel()
	r := newTestReconciler(t, k, nil, t.TempDir())
	broad := Rule{Priority: DefaultRulePriority, Src: vipPrefix(natSrc), Table: DefaultNATTable}
	web := Rule{Priority: DefaultRulePriority, Src: vipPrefix(natSrc), Proto: ProtoTCP, Sport: 8080, Table: DefaultNATTable}
	dns := Rule{Priority: DefaultRulePriority, Src: vipPrefix(natSrc), Proto: ProtoUDP, Sport: 53, Table: DefaultNATTable}
	d := Desired{Generation: 1, VIPs: []VIP{{vipNAT, MethodNAT}}, NATSources: []netip.Addr{natSrc}, NATGateway: natGw}
	for _, s := range []struct {
		name     string
		services []NATService
		want     []Rule
	}{
		{"director without services: whole source", nil, []Rule{broad}},
		{"services: their replies only", []NATService{{natSrc, ProtoTCP, 8080}, {natSrc, ProtoUDP, 53}}, []Rule{web, dns}},
		{"a service removed", []NATService{{natSrc, ProtoUDP, 53}}, []Rule{dns}},
	} {
		d.Generation++
		d.NATServices = s.services
		if st := r.reconcile(d); st.Err != nil {
			t.Fatalf("%s: reconcile: %v", s.name, st.Err)
		}
		if diff := cmp.Diff(s.want, k.snapshot().Rules, viewOpts); diff != "" {
			t.Errorf("%s: rules (-want +got):\n%s", s.name, diff)
		}
	}
}

// TestReconcileKeepsStricterARPIgnore: an arp_ignore that already keeps the
// realserver from answering ARP for a VIP on lo (1, 2 or 8) is left alone;
// one that does not (0, and 3, which still answers for global addresses) is
// set to 1.
func TestReconcileKeepsStricterARPIgnore(t *testing.T) {
	k := newFakeKernel()
	k.SetSysctl("net/ipv4/conf/all/arp_ignore", "2")
	k.SetSysctl("net/ipv4/conf/eth0/arp_ignore", "8")
	r := newTestReconciler(t, k, nil, t.TempDir())
	k.takeWrites()
	d := Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}}}
	if st := r.reconcile(d); st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	for _, w := range k.takeWrites() {
		if strings.Contains(w, "arp_ignore") {
			t.Errorf("wrote %q over a value that already fences the VIP", w)
		}
	}
	k.SetSysctl("net/ipv4/conf/eth0/arp_ignore", "3")
	d.Generation++
	if st := r.reconcile(d); st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	for n, want := range map[string]string{"net/ipv4/conf/all/arp_ignore": "2", "net/ipv4/conf/eth0/arp_ignore": "1"} {
		if got, _ := k.Sysctl(n); got != want {
			t.Errorf("%s = %q, want %q", n, got, want)
		}
	}
}

func TestReconcileLeavesForeignObjects(t *testing.T) {
	k := newFakeKernel()
	// An operator already has the VIP on lo and arp_ignore set on all.
	k.AddAddr("lo", vipPrefix(vipDR))
	k.SetSysctl("net/ipv4/conf/all/arp_ignore", "1")
	base := k.snapshot()
	r := newTestReconciler(t, k, nil, t.TempDir())
	k.takeWrites()

	st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}}})
	if st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	for _, w := range k.takeWrites() {
		if w == "addr add 198.51.100.10/32 lo" || w == "sysctl net/ipv4/conf/all/arp_ignore=1" {
			t.Errorf("wrote %q, which was already in place", w)
		}
	}
	if st := r.reconcile(Desired{Generation: 2}); st.Err != nil {
		t.Fatalf("reconcile empty: %v", st.Err)
	}
	if diff := cmp.Diff(base, k.snapshot(), viewOpts); diff != "" {
		t.Errorf("kernel (-before +after):\n%s", diff)
	}
}

func TestReconcileKeepsSysctlChangedBySomeoneElse(t *testing.T) {
	k := newFakeKernel()
	r := newTestReconciler(t, k, nil, t.TempDir())
	if st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}}}); st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	// An operator raises arp_ignore on eth0 while the agent holds it.
	k.SetSysctl("net/ipv4/conf/eth0/arp_ignore", "2")
	r.reconcile(Desired{Generation: 2, VIPs: []VIP{{vipDR, MethodDR}}})
	k.SetSysctl("net/ipv4/conf/eth0/arp_ignore", "8")
	if st := r.reconcile(Desired{Generation: 3}); st.Err != nil {
		t.Fatalf("reconcile empty: %v", st.Err)
	}
	got, _ := k.Sysctl("net/ipv4/conf/eth0/arp_ignore")
	if got != "8" {
		t.Errorf("eth0 arp_ignore = %q, want the operator's 8 kept", got)
	}
	got, _ = k.Sysctl("net/ipv4/conf/all/arp_ignore")
	if got != "0" {
		t.Errorf("all arp_ignore = %q, want 0 restored", got)
	}
}

func TestReconcileRestartKeepsOwnership(t *testing.T) {
	k := newFakeKernel()
	dec := newFakeDecapper()
	base := k.snapshot()
	dir := t.TempDir()
	d := Desired{Generation: 7, VIPs: []VIP{{vipDR, MethodDR}, {vipTUN, MethodTUN}}, NATSources: []netip.Addr{natSrc}, NATGateway: natGw, TunnelSources: []netip.Addr{dir1}}
	if st := newTestReconciler(t, k, dec, dir).reconcile(d); st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	applied := k.snapshot()
	k.takeWrites()

	// A restarted agent finds its config and owns what the first one added.
	r := newTestReconciler(t, k, newFakeDecapper(), dir)
	got, ok := r.lastDesired()
	if !ok {
		t.Fatal("lastDesired: none after restart")
	}
	if diff := cmp.Diff(d, got, viewOpts); diff != "" {
		t.Errorf("lastDesired (-want +got):\n%s", diff)
	}
	if st := r.reconcile(got); st.Err != nil {
		t.Fatalf("reconcile after restart: %v", st.Err)
	}
	if w := k.takeWrites(); len(w) > 0 {
		t.Errorf("restart wrote to the kernel: %q", w)
	}
	if diff := cmp.Diff(applied, k.snapshot(), viewOpts); diff != "" {
		t.Errorf("kernel after restart (-want +got):\n%s", diff)
	}
	if st := r.reconcile(Desired{Generation: 8}); st.Err != nil {
		t.Fatalf("reconcile empty: %v", st.Err)
	}
	if diff := cmp.Diff(base, k.snapshot(), viewOpts); diff != "" {
		t.Errorf("kernel after removal (-before +after):\n%s", diff)
	}
}

func TestReconcileKeepsVIPOffLoWithoutARPFence(t *testing.T) {
	k := newFakeKernel()
	k.failWrite["sysctl net/ipv4/conf/all/arp_announce"] = errors.New("permission denied")
	r := newTestReconciler(t, k, nil, t.TempDir())
	st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}}})
	if !errors.Is(st.Err, ErrARPNotSet) {
		t.Errorf("status error = %v, want ErrARPNotSet", st.Err)
	}
	if diff := cmp.Diff(statusView{Generation: 1, Applied: map[netip.Addr]bool{vipDR: false}}, viewStatus(st), viewOpts); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
	lo, _ := k.LinkByName("lo")
	if slices.Contains(lo.Addrs, vipPrefix(vipDR)) {
		t.Error("VIP is on lo although ARP is not fenced")
	}
	// Once the sysctl can be written, the next pass completes.
	delete(k.failWrite, "sysctl net/ipv4/conf/all/arp_announce")
	if st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}}}); st.Err != nil {
		t.Errorf("second pass: %v", st.Err)
	}
}

func TestReconcileTUNWithoutDecapper(t *testing.T) {
	k := newFakeKernel()
	r := newTestReconciler(t, k, nil, t.TempDir())
	st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}, {vipTUN, MethodTUN}}})
	if !errors.Is(st.Err, ErrNoDecapper) {
		t.Errorf("status error = %v, want ErrNoDecapper", st.Err)
	}
	want := statusView{Generation: 1, DecapMode: DecapModeBPF, Applied: map[netip.Addr]bool{vipDR: true, vipTUN: false}}
	if diff := cmp.Diff(want, viewStatus(st), viewOpts); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

func TestReconcileIPIP(t *testing.T) {
	k := newFakeKernel()
	k.ipip = true
	base := k.snapshot()
	dec := newFakeDecapper()
	r := newTestReconciler(t, k, dec, t.TempDir())
	st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipTUN, MethodTUN}}})
	if st.Err != nil || st.DecapMode != DecapModeIPIP {
		t.Fatalf("reconcile: mode %q, err %v; want ipip, nil", st.DecapMode, st.Err)
	}
	v := viewOf(base, k, dec)
	if diff := cmp.Diff([]string{DefaultTunnelName}, v.NewLinks); diff != "" {
		t.Errorf("links (-want +got):\n%s", diff)
	}
	if got := v.Sysctls["net/ipv4/conf/rlbtun0/rp_filter"]; got != "2" {
		t.Errorf("rlbtun0 rp_filter = %q, want 2", got)
	}
	if len(v.Decap) != 0 {
		t.Errorf("bpf decap attached in ipip mode: %v", v.Decap)
	}
	// Someone sets the tunnel down: it comes back up.
	l := k.st.Links[DefaultTunnelName]
	l.Up = false
	k.st.Links[DefaultTunnelName] = l
	r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipTUN, MethodTUN}}})
	if !k.st.Links[DefaultTunnelName].Up {
		t.Error("tunnel not set up again")
	}
	if st := r.reconcile(Desired{Generation: 2}); st.Err != nil {
		t.Fatalf("reconcile empty: %v", st.Err)
	}
	if diff := cmp.Diff(base, k.snapshot(), viewOpts); diff != "" {
		t.Errorf("kernel (-before +after):\n%s", diff)
	}
}

func TestReconcileRefusesForeignTunnel(t *testing.T) {
	k := newFakeKernel()
	k.ipip = true
	k.addLink(DefaultTunnelName, 1480)
	r := newTestReconciler(t, k, nil, t.TempDir())
	st := r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipTUN, MethodTUN}}})
	if st.Err == nil || st.VIPs[0].Applied {
		t.Errorf("status = %+v, want the TUN VIP failed", st)
	}
	r.reconcile(Desired{Generation: 2})
	if _, ok := k.st.Links[DefaultTunnelName]; !ok {
		t.Error("the agent deleted a tunnel it did not create")
	}
}

func TestCleanup(t *testing.T) {
	k := newFakeKernel()
	dec := newFakeDecapper()
	base := k.snapshot()
	dir := t.TempDir()
	d := Desired{Generation: 1, VIPs: []VIP{{vipDR, MethodDR}, {vipTUN, MethodTUN}}, NATSources: []netip.Addr{natSrc}, NATGateway: natGw}
	if st := newTestReconciler(t, k, dec, dir).reconcile(d); st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	if err := cleanup(k, dir, dec, testLogger(t)); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if diff := cmp.Diff(base, k.snapshot(), viewOpts); diff != "" {
		t.Errorf("kernel (-before +after):\n%s", diff)
	}
	if len(dec.snapshot()) != 0 {
		t.Errorf("decap still attached: %v", dec.snapshot())
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file: %v, want it removed", err)
	}
	// Cleanup again finds nothing to do.
	if err := cleanup(k, dir, nil, nil); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}

func TestCleanupNeedsDecapperForBPF(t *testing.T) {
	k := newFakeKernel()
	dir := t.TempDir()
	d := Desired{Generation: 1, VIPs: []VIP{{vipTUN, MethodTUN}}}
	if st := newTestReconciler(t, k, newFakeDecapper(), dir).reconcile(d); st.Err != nil {
		t.Fatalf("reconcile: %v", st.Err)
	}
	if err := cleanup(k, dir, nil, nil); !errors.Is(err, ErrNoDecapper) {
		t.Errorf("cleanup without decapper: %v, want ErrNoDecapper", err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		t.Errorf("state file: %v, want it kept for a retry", err)
	}
}

func TestStateStoreRoundTrip(t *testing.T) {
	s := stateStore{dir: filepath.Join(t.TempDir(), "sub")}
	want := record{
		Version: stateVersion,
		Desired: &Desired{Generation: 9, VIPs: []VIP{{vipTUN, MethodTUN}}, NATGateway: natGw},
		Links:   []string{"rlbtun0"},
		Sysctls: []ownedSysctl{{Name: "net/ipv4/conf/all/arp_ignore", Orig: "0", Set: "1"}},
		Addrs:   []ownedAddr{{Link: "lo", Prefix: vipPrefix(vipTUN)}},
		Routes:  []Route{{Table: 4243, Dst: any4, Gw: natGw, LinkIndex: 2, AdvMSS: 1440}},
		Rules:   []Rule{{Priority: 4242, Src: vipPrefix(vipTUN), Table: 4243}},
		Decap:   decapRecord{Mode: DecapModeBPF, Ifaces: []string{"eth0"}},
	}
	if err := s.save(want); err != nil {
		t.Fatalf("save: %v", err)
	}
	got, err := s.load()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if diff := cmp.Diff(want, got, viewOpts, cmp.AllowUnexported(record{}, ownedAddr{}, ownedSysctl{}, decapRecord{})); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	entries, _ := os.ReadDir(s.dir)
	if names := slices.Collect(maps.Keys(dirNames(entries))); len(names) != 1 {
		t.Errorf("state dir holds %v, want only %s", names, stateFile)
	}
}

func dirNames(es []os.DirEntry) map[string]bool {
	m := map[string]bool{}
	for _, e := range es {
		m[e.Name()] = true
	}
	return m
}
