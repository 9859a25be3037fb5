package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
)

// Defaults of the reconciler's knobs.
const (
	DefaultNATTable     = 4242
	DefaultMSSTable     = 4243
	DefaultRulePriority = 4242
	DefaultTunnelName   = "rlbtun0"
	// ipipOverhead is the outer IPv4 header a director adds for TUN.
	ipipOverhead = 20
	// tcpIPHeaders is what separates an MTU from an MSS.
	tcpIPHeaders = 40
	minMSS       = 536
)

// ErrNoDecapper is reported for TUN VIPs when the kernel has no ipip and no
// BPF decapper was configured.
var ErrNoDecapper = errors.New("kernel has no ipip and no bpf decapper is configured")

// ErrARPNotSet is reported for a DR or TUN VIP that is not put on lo because
// the ARP sysctls could not be set: with the VIP on lo and ARP unfenced, the
// realserver would answer ARP for the VIP and steal the director's traffic.
var ErrARPNotSet = errors.New("arp sysctls not set")

// reconcilerConfig holds the reconciler's knobs; see Config for each.
type reconcilerConfig struct {
	FacingIfaces []string
	NATTable     int
	MSSTable     int
	RulePriority int
	TunnelMSS    int
	TunnelName   string
}

// reconciler converges the kernel to a Desired config. It owns exactly what
// its record lists. Not safe for concurrent use: one goroutine drives it.
type reconciler struct {
	k     Kernel
	decap Decapper
	store stateStore
	cfg   reconcilerConfig
	log   *slog.Logger
	rec   record
	// ipipUnsupported caches the kernel's answer so a pass does not probe again.
	ipipUnsupported bool
}

func newReconciler(k Kernel, decap Decapper, store stateStore, cfg reconcilerConfig, log *slog.Logger) (*reconciler, error) {
	rec, err := store.load()
	if err != nil {
		return nil, err
	}
	// A restarted agent stays with the mode it chose: switching would be a blip.
	unsupported := rec.Decap.Mode == DecapModeBPF
	return &reconciler{k: k, decap: decap, store: store, cfg: cfg, log: log, rec: rec, ipipUnsupported: unsupported}, nil
}

// lastDesired returns the config of the last pass, kept across restarts.
func (r *reconciler) lastDesired() (Desired, bool) {
	if r.rec.Desired == nil {
		return Desired{}, false
	}
	return *r.rec.Desired, true
}

// pass collects the failures of one reconcile pass, by the VIPs they affect.
type pass struct {
	errs    []error
	vipErrs map[netip.Addr][]error
}

func (p *pass) fail(vips []netip.Addr, err error) {
	p.errs = append(p.errs, err)
	for _, v := range vips {
		p.vipErrs[v] = append(p.vipErrs[v], err)
	}
}

func (p *pass) failed(v netip.Addr) bool { return len(p.vipErrs[v]) > 0 }

// scope lists the VIPs that depend on something: the VIPs of the methods.
func scope(d Desired, ms ...Method) []netip.Addr {
	var out []netip.Addr
	for _, v := range d.VIPs {
		if slices.Contains(ms, v.Method) {
			out = append(out, v.Addr)
		}
	}
	return out
}

// reconcile makes one desired-vs-actual pass: add what is missing (records
// ownership first, so a crash never leaks an object), repair drift, then
// remove what it owns and no longer needs. It is safe to call again and again.
func (r *reconciler) reconcile(d Desired) Status {
	p := &pass{vipErrs: map[netip.Addr][]error{}}
	// The config is kept for a restart; only a change is written, not every
	// resync pass.
	if r.rec.Desired == nil || !d.equal(*r.rec.Desired) {
		dd := d
		r.rec.Desired = &dd
		if err := r.store.save(r.rec); err != nil {
			p.fail(nil, err)
		}
	}

	arpVIPs := scope(d, MethodDR, MethodTUN)
	tunVIPs := scope(d, MethodTUN)
	natVIPs := scope(d, MethodNAT)

	// Order matters: ARP is fenced before a VIP appears on lo, and a rule
	// points into a table only once the table is filled.
	mode := ""
	var links []string
	if len(tunVIPs) > 0 {
		mode = r.ensureIPIP(p, tunVIPs)
		if mode == DecapModeIPIP {
			links = []string{r.cfg.TunnelName}
		}
	}
	sysctls := r.wantSysctls(arpVIPs, tunVIPs, links)
	arpOK := r.ensureSysctls(p, sysctls)
	r.ensureAddrs(p, d, arpOK)
	var decapIfaces []string
	if mode == DecapModeBPF {
		decapIfaces = r.cfg.FacingIfaces
		r.ensureDecap(p, decapIfaces, d.TunnelSources, tunVIPs)
	}
	routes := r.wantRoutes(p, d, tunVIPs, natVIPs)
	r.ensureRoutes(p, routes)
	rules := r.wantRules(d)
	r.ensureRules(p, rules)

	r.removeRules(p, rules)
	r.removeRoutes(p, routes)
	r.removeDecap(p, decapIfaces)
	r.removeAddrs(p, d)
	r.removeSysctls(p, sysctls)
	r.removeLinks(p, links)

	st := Status{Generation: d.Generation, DecapMode: mode, Err: errors.Join(p.errs...)}
	for _, v := range d.VIPs {
		vs := VIPStatus{VIP: v.Addr, Applied: !p.failed(v.Addr)}
		if !vs.Applied {
			vs.Err = errors.Join(p.vipErrs[v.Addr]...).Error()
		}
		st.VIPs = append(st.VIPs, vs)
	}
	return st
}

// save persists the record before the kernel is changed; on failure the
// change is skipped so the kernel never holds an object the disk does not list.
func (r *reconciler) save(p *pass, vips []netip.Addr) bool {
	if err := r.store.save(r.rec); err != nil {
		p.fail(vips, err)
		return false
	}
	return true
}

// ensureIPIP keeps the agent's ipip device and returns the decap mode.
func (r *reconciler) ensureIPIP(p *pass, vips []netip.Addr) string {
	if r.ipipUnsupported {
		return DecapModeBPF
	}
	name := r.cfg.TunnelName
	owned := slices.Contains(r.rec.Links, name)
	l, err := r.k.LinkByName(name)
	switch {
	case err == nil && !owned:
		p.fail(vips, fmt.Errorf("create tunnel %s: a link of that name exists and is not the agent's", name))
		return DecapModeIPIP
	case err == nil:
		if !l.Up {
			r.log.Info("repair tunnel: set up", "iface", name)
			if err := r.k.SetLinkUp(name); err != nil {
				p.fail(vips, err)
			}
		}
		return DecapModeIPIP
	case !errors.Is(err, ErrNotFound):
		p.fail(vips, err)
		return DecapModeIPIP
	}
	if !owned {
		r.rec.Links = append(r.rec.Links, name)
		if !r.save(p, vips) {
			return DecapModeIPIP
		}
	}
	err = r.k.AddIPIPTunnel(name)
	if errors.Is(err, ErrNotSupported) {
		r.log.Info("kernel has no ipip: decapsulating with bpf", "iface", name, "err", err)
		r.ipipUnsupported = true
		r.rec.Links = slices.DeleteFunc(r.rec.Links, func(s string) bool { return s == name })
		r.rec.Decap.Mode = DecapModeBPF
		r.save(p, nil)
		return DecapModeBPF
	}
	if err != nil {
		p.fail(vips, err)
		return DecapModeIPIP
	}
	r.log.Info("created tunnel", "iface", name)
	r.rec.Decap.Mode = DecapModeIPIP
	r.save(p, nil)
	return DecapModeIPIP
}

func (r *reconciler) removeLinks(p *pass, want []string) {
	for _, name := range slices.Clone(r.rec.Links) {
		if slices.Contains(want, name) {
			continue
		}
		if err := r.k.DelLink(name); err != nil {
			p.fail(nil, err)
			continue
		}
		r.log.Info("deleted tunnel", "iface", name)
		r.rec.Links = slices.DeleteFunc(r.rec.Links, func(s string) bool { return s == name })
		if r.rec.Decap.Mode == DecapModeIPIP {
			r.rec.Decap.Mode = ""
		}
		r.save(p, nil)
	}
}

// wantSysctl is one sysctl the config needs; ok says whether the current
// value already serves, value is what the agent writes otherwise.
type wantSysctl struct {
	name  string
	value string
	ok    func(cur string) bool
	vips  []netip.Addr
	arp   bool
}

func exactly(v string) func(string) bool { return func(cur string) bool { return cur == v } }

// fencesVIPs accepts the arp_ignore values that keep a realserver from
// answering ARP for a VIP on lo: 1 and 2 (the target must be on the incoming
// interface) and 8 (never answer). 3 does not: it only skips scope host
// addresses, and the VIPs are global. 0 and the reserved 4-7 answer for any
// local address.
func fencesVIPs(cur string) bool { return cur == "1" || cur == "2" || cur == "8" }

// relaxed accepts rp_filter off (0) or loose (2): strict mode (1) drops what
// arrives on a tunnel or decapsulated on an interface the reply does not leave by.
func relaxed(cur string) bool { return cur == "0" || cur == "2" }

func (r *reconciler) wantSysctls(arpVIPs, tunVIPs []netip.Addr, tunnels []string) []wantSysctl {
	var out []wantSysctl
	ifaces := append([]string{"all"}, r.cfg.FacingIfaces...)
	if len(arpVIPs) > 0 {
		// The kernel uses the maximum of "all" and the interface's value for
		// both, so each must fence on its own; a stricter value an
		// administrator chose is kept.
		for _, ifc := range ifaces {
			out = append(out,
				wantSysctl{name: "net/ipv4/conf/" + ifc + "/arp_ignore", value: "1", ok: fencesVIPs, vips: arpVIPs, arp: true},
				wantSysctl{name: "net/ipv4/conf/" + ifc + "/arp_announce", value: "2", ok: exactly("2"), vips: arpVIPs, arp: true})
		}
	}
	if len(tunVIPs) > 0 {
		for _, ifc := range append(ifaces, tunnels...) {
			out = append(out, wantSysctl{name: "net/ipv4/conf/" + ifc + "/rp_filter", value: "2", ok: relaxed, vips: tunVIPs})
		}
	}
	return out
}

func (r *reconciler) ownedSysctl(name string) int {
	return slices.IndexFunc(r.rec.Sysctls, func(o ownedSysctl) bool { return o.Name == name })
}

// ensureSysctls sets what is wanted and reports whether the ARP ones hold.
func (r *reconciler) ensureSysctls(p *pass, want []wantSysctl) (arpOK bool) {
	arpOK = true
	for _, w := range want {
		cur, err := r.k.Sysctl(w.name)
		if err != nil {
			p.fail(w.vips, err)
			arpOK = arpOK && !w.arp
			continue
		}
		if w.ok(cur) {
			continue
		}
		if i := r.ownedSysctl(w.name); i >= 0 {
			r.log.Info("repair sysctl", "sysctl", w.name, "value", w.value, "found", cur)
			r.rec.Sysctls[i].Set = w.value
		} else {
			r.log.Info("set sysctl", "sysctl", w.name, "value", w.value, "orig", cur)
			r.rec.Sysctls = append(r.rec.Sysctls, ownedSysctl{Name: w.name, Orig: cur, Set: w.value})
		}
		if !r.save(p, w.vips) {
			arpOK = arpOK && !w.arp
			continue
		}
		if err := r.k.SetSysctl(w.name, w.value); err != nil {
			p.fail(w.vips, err)
			arpOK = arpOK && !w.arp
		}
	}
	return arpOK
}

// removeSysctls restores the sysctls the agent changed and no longer needs,
// unless someone changed them again since: then the value is theirs.
func (r *reconciler) removeSysctls(p *pass, want []wantSysctl) {
	for _, o := range slices.Clone(r.rec.Sysctls) {
		if slices.ContainsFunc(want, func(w wantSysctl) bool { return w.name == o.Name }) {
			continue
		}
		cur, err := r.k.Sysctl(o.Name)
		switch {
		case errors.Is(err, ErrNotFound):
			// The interface is gone and its settings with it.
		case err != nil:
			p.fail(nil, err)
			continue
		case cur == o.Set:
			if err := r.k.SetSysctl(o.Name, o.Orig); err != nil && !errors.Is(err, ErrNotFound) {
				p.fail(nil, err)
				continue
			}
			r.log.Info("restored sysctl", "sysctl", o.Name, "value", o.Orig)
		default:
			r.log.Info("not restoring sysctl changed by someone else", "sysctl", o.Name, "value", cur)
		}
		r.rec.Sysctls = slices.DeleteFunc(r.rec.Sysctls, func(s ownedSysctl) bool { return s.Name == o.Name })
		r.save(p, nil)
	}
}

func vipPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 32) }

// ensureAddrs puts every DR and TUN VIP on lo as a /32, as LVS does. A VIP
// already there that the agent did not add stays someone else's.
func (r *reconciler) ensureAddrs(p *pass, d Desired, arpOK bool) {
	var lo Link
	for _, v := range d.VIPs {
		if v.Method != MethodDR && v.Method != MethodTUN {
			continue
		}
		if lo.Name == "" {
			var err error
			if lo, err = r.k.LinkByName("lo"); err != nil {
				p.fail(scope(d, MethodDR, MethodTUN), err)
				return
			}
		}
		want := ownedAddr{Link: "lo", Prefix: vipPrefix(v.Addr)}
		if slices.Contains(lo.Addrs, want.Prefix) {
			continue
		}
		vips := []netip.Addr{v.Addr}
		if !arpOK {
			p.fail(vips, fmt.Errorf("add %s to lo: %w", v.Addr, ErrARPNotSet))
			continue
		}
		if !slices.Contains(r.rec.Addrs, want) {
			r.rec.Addrs = append(r.rec.Addrs, want)
			if !r.save(p, vips) {
				continue
			}
		}
		r.log.Info("add vip", "vip", v.Addr, "iface", "lo")
		if err := r.k.AddAddr(want.Link, want.Prefix); err != nil {
			p.fail(vips, err)
		}
	}
}

func (r *reconciler) removeAddrs(p *pass, d Desired) {
	for _, o := range slices.Clone(r.rec.Addrs) {
		if o.Link == "lo" && slices.ContainsFunc(d.VIPs, func(v VIP) bool {
			return vipPrefix(v.Addr) == o.Prefix && (v.Method == MethodDR || v.Method == MethodTUN)
		}) {
			continue
		}
		if err := r.k.DelAddr(o.Link, o.Prefix); err != nil {
			p.fail(nil, err)
			continue
		}
		r.log.Info("removed vip", "vip", o.Prefix.Addr(), "iface", o.Link)
		r.rec.Addrs = slices.DeleteFunc(r.rec.Addrs, func(a ownedAddr) bool { return a == o })
		r.save(p, nil)
	}
}

// ensureDecap attaches the BPF decapsulation on every facing interface. It
// calls Attach on every pass: the decapper verifies and repairs its own
// attachment.
func (r *reconciler) ensureDecap(p *pass, ifaces []string, sources, vips []netip.Addr) {
	if r.decap == nil {
		p.fail(vips, fmt.Errorf("decapsulate: %w", ErrNoDecapper))
		return
	}
	for _, ifc := range ifaces {
		if !slices.Contains(r.rec.Decap.Ifaces, ifc) {
			r.rec.Decap.Ifaces = append(r.rec.Decap.Ifaces, ifc)
			r.rec.Decap.Mode = r.decap.Mode()
			if !r.save(p, vips) {
				continue
			}
			r.log.Info("attach decap", "iface", ifc, "mode", r.decap.Mode())
		}
		created, err := r.decap.Attach(ifc, sources)
		// Recorded after the fact: Attach alone knows whether it created the
		// qdisc. A crash in between leaves an empty clsact behind, nothing
		// that touches traffic.
		if created && !slices.Contains(r.rec.Decap.Created, ifc) {
			r.rec.Decap.Created = append(r.rec.Decap.Created, ifc)
			r.save(p, vips)
		}
		if err != nil {
			p.fail(vips, fmt.Errorf("attach decap on %s: %w", ifc, err))
		}
	}
}

func (r *reconciler) removeDecap(p *pass, want []string) {
	for _, ifc := range slices.Clone(r.rec.Decap.Ifaces) {
		if slices.Contains(want, ifc) {
			continue
		}
		if r.decap == nil {
			p.fail(nil, fmt.Errorf("detach decap on %s: %w", ifc, ErrNoDecapper))
			continue
		}
		if err := r.decap.Detach(ifc, slices.Contains(r.rec.Decap.Created, ifc)); err != nil {
			p.fail(nil, fmt.Errorf("detach decap on %s: %w", ifc, err))
			continue
		}
		r.log.Info("detached decap", "iface", ifc)
		r.rec.Decap.Ifaces = slices.DeleteFunc(r.rec.Decap.Ifaces, func(s string) bool { return s == ifc })
		r.rec.Decap.Created = slices.DeleteFunc(r.rec.Decap.Created, func(s string) bool { return s == ifc })
		r.save(p, nil)
	}
}

// wantedRoute is a route and the VIPs that depend on it.
type wantedRoute struct {
	Route
	vips []netip.Addr
}

// wantRoutes derives the agent's tables from the main table:
//   - MSSTable mirrors the facing interfaces' main routes with AdvMSS lowered
//     by the tunnel overhead; rules send replies from TUN VIPs through it.
//   - NATTable has a default route via the gateway and the gateway's on-link
//     subnet (so on-link peers such as health checkers are still answered
//     directly); rules send replies from the NAT sources through it.
func (r *reconciler) wantRoutes(p *pass, d Desired, tunVIPs, natVIPs []netip.Addr) []wantedRoute {
	if len(tunVIPs) == 0 && len(d.NATSources) == 0 {
		return nil
	}
	main, err := r.k.Routes(MainTable)
	if err != nil {
		p.fail(append(slices.Clone(tunVIPs), natVIPs...), err)
		return nil
	}
	var out []wantedRoute
	if len(tunVIPs) > 0 {
		for _, ifc := range r.cfg.FacingIfaces {
			l, err := r.k.LinkByName(ifc)
			if err != nil {
				p.fail(tunVIPs, err)
				continue
			}
			mss := r.cfg.TunnelMSS
			if mss == 0 {
				mss = max(l.MTU-ipipOverhead-tcpIPHeaders, minMSS)
			}
			for _, m := range main {
				if m.LinkIndex != l.Index {
					continue
				}
				out = append(out, wantedRoute{Route{Table: r.cfg.MSSTable, Dst: m.Dst, Gw: m.Gw, LinkIndex: l.Index, AdvMSS: mss}, tunVIPs})
			}
		}
	}
	if len(d.NATSources) > 0 {
		out = append(out, wantedRoute{Route{Table: r.cfg.NATTable, Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gw: d.NATGateway}, natVIPs})
		for _, m := range main {
			if !m.Gw.IsValid() && m.Dst.Bits() > 0 && m.Dst.Contains(d.NATGateway) {
				out = append(out, wantedRoute{Route{Table: r.cfg.NATTable, Dst: m.Dst, LinkIndex: m.LinkIndex}, natVIPs})
				break
			}
		}
	}
	// One route per destination and table; the first interface wins.
	seen := map[string]bool{}
	return slices.DeleteFunc(out, func(w wantedRoute) bool {
		k := w.key()
		dup := seen[k]
		seen[k] = true
		return dup
	})
}

func routeMatches(want, got Route) bool {
	return want.Gw == got.Gw && want.AdvMSS == got.AdvMSS && (want.LinkIndex == 0 || want.LinkIndex == got.LinkIndex)
}

// ensureRoutes fills the agent's tables. The tables are the agent's: a route
// in them that it does not own is replaced and becomes its own.
func (r *reconciler) ensureRoutes(p *pass, want []wantedRoute) {
	tables := map[int][]Route{}
	for _, w := range want {
		got, ok := tables[w.Table]
		if !ok {
			var err error
			if got, err = r.k.Routes(w.Table); err != nil {
				p.fail(w.vips, err)
				continue
			}
			tables[w.Table] = got
		}
		if i := slices.IndexFunc(got, func(g Route) bool { return g.key() == w.key() }); i >= 0 && routeMatches(w.Route, got[i]) {
			continue
		}
		r.rec.Routes = slices.DeleteFunc(r.rec.Routes, func(o Route) bool { return o.key() == w.key() })
		r.rec.Routes = append(r.rec.Routes, w.Route)
		if !r.save(p, w.vips) {
			continue
		}
		r.log.Info("replace route", "route", w.Route.String())
		if err := r.k.ReplaceRoute(w.Route); err != nil {
			p.fail(w.vips, err)
		}
	}
}

func (r *reconciler) removeRoutes(p *pass, want []wantedRoute) {
	for _, o := range slices.Clone(r.rec.Routes) {
		if slices.ContainsFunc(want, func(w wantedRoute) bool { return w.key() == o.key() }) {
			continue
		}
		if err := r.k.DelRoute(o); err != nil {
			p.fail(nil, err)
			continue
		}
		r.log.Info("removed route", "route", o.String())
		r.rec.Routes = slices.DeleteFunc(r.rec.Routes, func(x Route) bool { return x.key() == o.key() })
		r.save(p, nil)
	}
}

type wantedRule struct {
	Rule
	vips []netip.Addr
}

func (r *reconciler) wantRules(d Desired) []wantedRule {
	var out []wantedRule
	for _, v := range d.VIPs {
		if v.Method == MethodTUN {
			out = append(out, wantedRule{Rule{Priority: r.cfg.RulePriority, Src: vipPrefix(v.Addr), Table: r.cfg.MSSTable}, []netip.Addr{v.Addr}})
		}
	}
	// A NAT source's rules match only the replies of its services, so the
	// realserver's own traffic from that address (DNS, updates) keeps the main
	// table: the director forwards nothing but its services' replies.
	natVIPs := scope(d, MethodNAT)
	for _, s := range d.NATSources {
		narrowed := false
		for _, n := range d.NATServices {
			if n.Source == s {
				out = append(out, wantedRule{Rule{Priority: r.cfg.RulePriority, Src: vipPrefix(s), Proto: n.Proto, Sport: n.Port, Table: r.cfg.NATTable}, natVIPs})
				narrowed = true
			}
		}
		if !narrowed {
			out = append(out, wantedRule{Rule{Priority: r.cfg.RulePriority, Src: vipPrefix(s), Table: r.cfg.NATTable}, natVIPs})
		}
	}
	return out
}

// ensureRules adds the source rules; one that exists and is not the agent's
// serves but stays its owner's.
func (r *reconciler) ensureRules(p *pass, want []wantedRule) {
	if len(want) == 0 {
		return
	}
	got, err := r.k.Rules()
	if err != nil {
		for _, w := range want {
			p.fail(w.vips, err)
		}
		return
	}
	for _, w := range want {
		if slices.Contains(got, w.Rule) {
			continue
		}
		if !slices.Contains(r.rec.Rules, w.Rule) {
			r.rec.Rules = append(r.rec.Rules, w.Rule)
			if !r.save(p, w.vips) {
				continue
			}
		}
		r.log.Info("add rule", "rule", w.Rule.String())
		if err := r.k.AddRule(w.Rule); err != nil {
			p.fail(w.vips, err)
		}
	}
}

func (r *reconciler) removeRules(p *pass, want []wantedRule) {
	for _, o := range slices.Clone(r.rec.Rules) {
		if slices.ContainsFunc(want, func(w wantedRule) bool { return w.Rule == o }) {
			continue
		}
		if err := r.k.DelRule(o); err != nil {
			p.fail(nil, err)
			continue
		}
		r.log.Info("removed rule", "rule", o.String())
		r.rec.Rules = slices.DeleteFunc(r.rec.Rules, func(x Rule) bool { return x == o })
		r.save(p, nil)
	}
}
