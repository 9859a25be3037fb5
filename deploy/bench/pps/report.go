package main

import (
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// results[path][mix][cycle] is packets per second.
type results map[string]map[string]map[int]float64

func (r results) add(path, mix string, cycle int, pps float64) {
	if r[path] == nil {
		r[path] = make(map[string]map[int]float64)
	}
	if r[path][mix] == nil {
		r[path][mix] = make(map[int]float64)
	}
	r[path][mix][cycle] = pps
}

// paired applies f to a and b of the same cycle, for every cycle that has both.
func (r results) paired(a, b, mix string, f func(x, y float64) float64) []float64 {
	var out []float64
	for c, x := range r[a][mix] {
		if y, ok := r[b][mix][c]; ok {
			out = append(out, f(x, y))
		}
	}
	return out
}

func (r results) values(path, mix string) []float64 {
	var out []float64
	for _, v := range r[path][mix] {
		out = append(out, v)
	}
	return out
}

// stat is a median with its interquartile range and extremes.
type stat struct{ med, q1, q3, lo, hi float64 }

func summarize(v []float64) stat {
	if len(v) == 0 {
		return stat{math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN()}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	q := func(p float64) float64 {
		x := p * float64(len(s)-1)
		i := int(x)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + (x-float64(i))*(s[i+1]-s[i])
	}
	return stat{q(0.5), q(0.25), q(0.75), s[0], s[len(s)-1]}
}

// nsOwn is a path's own cost per packet: its time per packet minus the
// straight path's, paired by cycle.
func (r results) nsOwn(path, mix string) []float64 {
	return r.paired(path, "direct", mix, func(x, y float64) float64 { return 1e9/x - 1e9/y })
}

type target struct {
	what  string
	got   stat
	goal  float64
	below bool // the goal is an upper bound
}

// ran reports whether the run included the named path.
func (b *bench) ran(name string) bool {
	return slices.ContainsFunc(b.paths, func(p path) bool { return p.name == name })
}

// ranMix reports whether the run included the named mix.
func (b *bench) ranMix(name string) bool {
	return slices.ContainsFunc(b.mixes, func(m mix) bool { return m.name == name })
}

// perfOwn is a path's own cost per packet from perf, one value per round.
func (b *bench) perfOwn(prof profiles, name, mix string) []float64 {
	var v []float64
	for _, r := range prof[name][mix] {
		v = append(v, r.own())
	}
	return v
}

func (b *bench) writeReport(r results, tabs fills, prof profiles, took time.Duration) error {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("## Packets per second through a director (netns lab)\n\n")
	p("`go run ./deploy/bench/pps` (part of `make bench`, root): client → bridge → director → bridge → 3 realservers,\n")
	p("veth pairs, generic XDP, 64-byte UDP frames from one trafgen on one CPU, counted and dropped on the realservers by a\n")
	p("TC program (tcx ingress). The sink is TC, not XDP, because generic XDP copies every skb with less than 256 bytes of\n")
	p("headroom: trafgen's frames have 16, so an XDP sink charged `direct` and `nft-*` a copy the director never made, and\n")
	p("charged `raftlb-tun` a second one (the director's encapsulation leaves 252). The director's own generic XDP copy\n")
	p("(once per packet on every XDP path, none on `nft-*`) is part of its cost in this lab.\n")
	p("%d cycles; each cycle runs every path × traffic mix once in random order (%s counted per run after %s warm-up",
		b.o.cycles, b.o.window, b.o.warmup)
	if b.ranFull() {
		p(";\n%s for `flood` on the paths with a state table, `raftlb-*` and `nft-*`, so that it is full when the count starts", b.o.floodWarmup)
	}
	p(");\nratios are paired within a cycle. Medians, with [25th–75th percentile] and (min–max) across cycles. Total %s", took.Round(time.Second))
	if prof != nil {
		p(" with the profiled runs")
	}
	p(".\n\n")
	if len(b.paths) < len(allPaths) || len(b.mixes) < len(allMixes) {
		p("**Partial run**: paths %s; mixes %s. Rows, ratios and targets that need another path are left out.\n\n",
			strings.Join(names(b.paths, pathName), ", "), strings.Join(names(b.mixes, mixName), ", "))
	}
	p("Paths: `direct` client straight to a realserver (no director); `bounce` an XDP program that only rewrites MACs and\n")
	p("transmits (XDP_TX); `raftlb-*` the director dataplane (Maglev, connection table, events consumed by Run);\n")
	p("`nft-*` nftables DNAT with conntrack, endpoint picked by a `jhash` or `numgen random` map (kube-proxy's nftables mode).\n")
	p("Everything runs in the generator's softirq on one CPU, so packets/s = 1 / (cost per packet)")
	if b.ran("direct") {
		var ns []float64
		for _, m := range b.mixes {
			ns = append(ns, 1e9/summarize(r.values("direct", m.name)).med)
		}
		p("; `direct` takes %.1f µs a\n", summarize(ns).med/1e3)
		p("packet (generator, bridge, veth pair, sink), which every path pays and which compresses end-to-end ratios")
	}
	p(".\n\n")
	b.writeMixes(p)
	p("The director's own cost comes from perf (`perf record -e cpu-clock -F %d -a -g`, on for exactly the counted\n", perfFreq)
	p("window of one extra run per path and mix after the cycles): the inclusive time of the functions that run only at the\n")
	p("director on that path, over the packets the realservers counted meanwhile. It leaves out what every path pays (the\n")
	p("generator, both bridge crossings, the veth pair into the director and the director's receive up to the point where\n")
	p("its path begins), so it is the figure the targets compare. The older view, ns/packet minus `direct`'s paired by\n")
	p("cycle, includes the second bridge crossing and the director's veth pair, and is kept as a secondary table.\n\n")

	header := func(first string) {
		p("| %s |", first)
		for _, m := range b.mixes {
			p(" %s |", m.desc)
		}
		p("\n| --- |%s\n", strings.Repeat(" ---: |", len(b.mixes)))
	}
	p("### Packets per second\n\n")
	header("path")
	for _, pt := range b.paths {
		p("| %s |", pt.name)
		for _, m := range b.mixes {
			s := summarize(r.values(pt.name, m.name))
			p(" %.0fk [%.0fk–%.0fk] |", s.med/1e3, s.q1/1e3, s.q3/1e3)
		}
		p("\n")
	}
	b.writeTables(p, tabs)
	if prof != nil {
		b.writePerf(p, header, r, prof)
	}
	if b.ran("direct") && len(b.paths) > 1 {
		p("\n### Secondary: ns/packet minus `direct` (includes the second bridge crossing and the director's veth pair)\n\n")
		header("path")
		for _, pt := range b.paths {
			if pt.direct {
				continue
			}
			p("| %s |", pt.name)
			for _, m := range b.mixes {
				s := summarize(r.nsOwn(pt.name, m.name))
				p(" %.0f [%.0f–%.0f] |", s.med, s.q1, s.q3)
			}
			p("\n")
		}
	}
	ratio := func(x, y float64) float64 { return x / y }
	var pairs [][2]string
	for _, pr := range [][2]string{
		{"raftlb-dr", "bounce"}, {"raftlb-tun", "bounce"}, {"raftlb-nat", "bounce"},
		{"raftlb-nat", "nft-jhash"}, {"raftlb-nat", "nft-numgen"}, {"raftlb-dr", "nft-jhash"}, {"raftlb-dr", "nft-numgen"},
		{"bounce", "nft-jhash"}, {"bounce", "nft-numgen"},
	} {
		if b.ran(pr[0]) && b.ran(pr[1]) {
			pairs = append(pairs, pr)
		}
	}
	if len(pairs) > 0 {
		p("\n### Paired ratios (packets/s)\n\n")
		header("ratio")
		for _, pr := range pairs {
			p("| %s / %s |", pr[0], pr[1])
			for _, m := range b.mixes {
				s := summarize(r.paired(pr[0], pr[1], m.name, ratio))
				p(" %.2f [%.2f–%.2f] (%.2f–%.2f) |", s.med, s.q1, s.q3, s.lo, s.hi)
			}
			p("\n")
		}
	}
	// The ratio of two paths' own costs from perf, paired by round.
	costRatio := func(a, bb, mix string) stat {
		x, y := b.perfOwn(prof, a, mix), b.perfOwn(prof, bb, mix)
		var v []float64
		for i := range min(len(x), len(y)) {
			v = append(v, x[i]/y[i])
		}
		return summarize(v)
	}
	type row struct {
		t     target
		paths []string
		mix   string
		perf  bool // needs the perf runs
	}
	pr := func(what string, goal float64, a, bb, mix string) row {
		return row{target{what, summarize(r.paired(a, bb, mix, ratio)), goal, false}, []string{a, bb}, mix, false}
	}
	cr := func(what string, goal float64, a, bb, mix string) row {
		return row{target{what, costRatio(a, bb, mix), goal, true}, []string{a, bb}, mix, true}
	}
	rows := []row{
		pr("raftlb-dr / bounce, one flow", 0.9, "raftlb-dr", "bounce", "1flow"),
		pr("raftlb-dr / bounce, ~59k flows", 0.9, "raftlb-dr", "bounce", "59k"),
		pr("raftlb-tun / bounce, one flow", 0.9, "raftlb-tun", "bounce", "1flow"),
		pr("raftlb-tun / bounce, ~59k flows", 0.9, "raftlb-tun", "bounce", "59k"),
		cr("own cost (perf) raftlb-nat / nft-jhash, ~59k flows", 0.5, "raftlb-nat", "nft-jhash", "59k"),
		cr("own cost (perf) raftlb-nat / nft-numgen, ~59k flows", 0.5, "raftlb-nat", "nft-numgen", "59k"),
		cr("own cost (perf) raftlb-dr / nft-jhash, ~59k flows", 0.5, "raftlb-dr", "nft-jhash", "59k"),
	}
	for _, pair := range [][2]string{{"raftlb-nat", "nft-jhash"}, {"raftlb-nat", "nft-numgen"}, {"raftlb-dr", "nft-numgen"}} {
		for _, m := range newTupleMixes {
			what := fmt.Sprintf("%s / %s, new tuple per packet, %s", pair[0], pair[1], m.label)
			if pair[0] == "raftlb-nat" && m.name == "flood" {
				what += " (new NAT flows cannot complete here: reverse-NAT table full)"
			}
			rows = append(rows, pr(what, 2, pair[0], pair[1], m.name))
		}
	}
	var targets []target
	skippedPerf, ownTargets := false, false
	for _, rw := range rows {
		if !b.ranMix(rw.mix) || slices.ContainsFunc(rw.paths, func(s string) bool { return !b.ran(s) }) {
			continue
		}
		if rw.perf && prof == nil {
			skippedPerf = true
			continue
		}
		ownTargets = ownTargets || rw.perf
		targets = append(targets, rw.t)
	}
	if len(targets) > 0 {
		p("\n### Targets\n\n| target | median [IQR] | goal | met |\n| --- | ---: | ---: | --- |\n")
		for _, t := range targets {
			met := t.got.med >= t.goal
			cmp := "≥"
			if t.below {
				met, cmp = t.got.med <= t.goal, "≤"
			}
			p("| %s | %.2f [%.2f–%.2f] | %s %.2f | %s |\n", t.what, t.got.med, t.got.q1, t.got.q3, cmp, t.goal, yesNo(met))
		}
		// What no director can beat: the bare bounce does no work at all.
		var ceil []string
		for _, nft := range []string{"nft-jhash", "nft-numgen"} {
			var v []string
			for _, m := range newTupleMixes {
				if b.ran("bounce") && b.ran(nft) && b.ranMix(m.name) {
					v = append(v, fmt.Sprintf("%.2f (%s)", summarize(r.paired("bounce", nft, m.name, ratio)).med, m.label))
				}
			}
			if len(v) > 0 {
				ceil = append(ceil, fmt.Sprintf("bounce / %s with a new tuple per packet is %s", nft, strings.Join(v, " and ")))
			}
			if prof != nil && b.ran("bounce") && b.ran(nft) && b.ranMix("59k") {
				ceil = append(ceil, fmt.Sprintf("the bounce's own cost / %s's at ~59k flows is %.2f", nft,
					costRatio("bounce", nft, "59k").med))
			}
		}
		if len(ceil) > 0 {
			p("\n%s\n", wrap("Ceilings from the same run, for reading the goals: "+strings.Join(ceil, "; ")+
				". A goal beyond what the bounce reaches cannot be met on this topology by any director.", 118))
		}
		if ownTargets && b.o.perfRuns == 1 {
			p("\nOwn-cost targets come from one profiled run per path and mix, so their IQR is a single value; on this kind of\n")
			p("machine one path's own cost moves by 10–30%% between runs, so read values near the goal as undecided (`-perf-runs`\n")
			p("gives a spread).\n")
		}
	}
	if skippedPerf {
		p("\nOwn-cost targets left out: run without `-perf=false` to measure them.\n")
	}
	if len(b.memory) > 0 {
		p("\n### Connection table\n\n")
		sizes := slices.Sorted(maps.Keys(b.memory))
		for _, size := range sizes {
			p("- %s.\n", b.memory[size])
		}
		p("\nBoth tables are preallocated arrays of two-choice, eight-way buckets mapped into the director process, each\n")
		p("with a third more slots than its capacity (`Config.ConnTableSize`, default 262144); a NAT connection also holds a\n")
		p("reverse entry. The one-flow, ~59k-flow and `flood` runs use the default capacity, as a director would; `churn`\n")
		p("gets %d so that it never fills in a run. A table much bigger than its flows costs TLB and cache misses\n", b.o.conns)
		p("on every packet: at ~59k flows the DR path's own cost was ~200 ns higher with the 2M-entry table than with the\n")
		p("default when both were measured.\n")
	}
	if err := os.MkdirAll(dirOf(b.o.out), 0o755); err != nil {
		return fmt.Errorf("create report dir: %w", err)
	}
	if err := os.WriteFile(b.o.out, []byte(w.String()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// writePerf writes the perf-based own cost, the functions that mark the
// director's samples and a breakdown.
func (b *bench) writePerf(p func(string, ...any), header func(string), r results, prof profiles) {
	p("\n### Director's own cost per packet (ns, perf)\n\n")
	header("path")
	for _, pt := range b.paths {
		if len(pt.own) == 0 {
			continue
		}
		p("| %s |", pt.name)
		for _, m := range b.mixes {
			s := summarize(b.perfOwn(prof, pt.name, m.name))
			if b.o.perfRuns > 1 {
				p(" %.0f (%.0f–%.0f) |", s.med, s.lo, s.hi)
			} else {
				p(" %.0f |", s.med)
			}
		}
		p("\n")
	}
	p("\nA sample is the director's if any frame of its call chain is one of these (counted once, by `perf report --parent`):\n\n")
	for _, pt := range b.paths {
		if len(pt.own) == 0 {
			continue
		}
		var ls []string
		for _, s := range pt.own {
			ls = append(ls, symLabel(s))
		}
		p("- %s: %s\n", pt.name, strings.Join(ls, ", "))
	}
	p("\n`do_xdp_generic` runs only at the director's front (the one XDP program in the lab) and includes its XDP_TX\n")
	p("up to the hand-over to the next veth's backlog (`generic_xdp_tx`, `veth_xmit`), not what happens after; the other\n")
	p("hops call it too and return at once (a few ns). The IP functions run only at the director (the sink drops at tcx\n")
	p("ingress); all of them are listed because `ip_rcv` reaches forwarding and output by tail calls, which take its frame\n")
	p("off the stack: `ip_rcv` alone misses about a third of the director's time on the nft paths (see its column below).\n")
	p("The tcx dispatch around `tc_front` is inlined into `__netif_receive_skb_core`, which every hop runs, and is left out.\n")

	// Breakdown: columns for the functions that show up anywhere.
	var cols []int
	for i, bd := range breakdown {
		for _, pt := range b.paths {
			for _, m := range b.mixes {
				for _, run := range prof[pt.name][m.name] {
					if run.ns(bd.sym) >= 1 && !slices.Contains(cols, i) {
						cols = append(cols, i)
					}
				}
			}
		}
	}
	slices.Sort(cols)
	p("\nPer profiled run (median over runs): packets/s while perf recorded and the cycles' median without it (perf's\n")
	p("sampling and this machine's drift both show in the difference), ns per packet under perf (1 / pps), the own cost,\n")
	p("and the inclusive time of some functions within the director's samples (`perf report --parent … -x`):\n\n")
	p("| path | mix | pps under perf | pps in the cycles | ns/packet under perf | own |")
	for _, c := range cols {
		p(" %s |", symLabel(breakdown[c].sym))
	}
	p("\n| --- | --- | ---: | ---: | ---: | ---: |%s\n", strings.Repeat(" ---: |", len(cols)))
	for _, pt := range b.paths {
		if len(pt.own) == 0 {
			continue
		}
		for _, m := range b.mixes {
			runs := prof[pt.name][m.name]
			med := func(f func(perfRun) float64) float64 {
				var v []float64
				for _, r := range runs {
					v = append(v, f(r))
				}
				return summarize(v).med
			}
			pps := med(func(r perfRun) float64 { return r.w.pps() })
			p("| %s | %s | %.0fk | %.0fk | %.0f | %.0f |", pt.name, m.name, pps/1e3, summarize(r.values(pt.name, m.name)).med/1e3,
				1e9/pps, med(func(r perfRun) float64 { return r.own() }))
			for _, c := range cols {
				v := med(func(r perfRun) float64 { return r.ns(breakdown[c].sym) })
				if v < 1 {
					p(" – |")
				} else {
					p(" %.0f |", v)
				}
			}
			p("\n")
		}
	}
	p("\n")
	for _, c := range cols {
		p("- %s: %s.\n", symLabel(breakdown[c].sym), breakdown[c].what)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return "."
}

// newTupleMixes are the two states of the director's tables under a new
// tuple per packet, as the targets name them.
var newTupleMixes = []struct{ name, label string }{
	{"churn", "tables filling"},
	{"flood", "tables full, steady state"},
}

// ranFull reports whether the run included a mix into full tables.
func (b *bench) ranFull() bool {
	return slices.ContainsFunc(b.mixes, func(m mix) bool { return m.tables == full })
}

// writeMixes describes the traffic mixes that ran.
func (b *bench) writeMixes(p func(string, ...any)) {
	var ms []string
	for _, m := range b.mixes {
		switch m.name {
		case "1flow":
			ms = append(ms, "`1flow` one UDP flow")
		case "59k":
			ms = append(ms, "`59k` ~59k flows (source ports 1024–60000 in turn)")
		case "churn":
			ms = append(ms, fmt.Sprintf("`churn`, tables filling: every run starts with empty tables (conntrack flushed, a new "+
				"raftlb table of %d connections, which a run cannot fill), so the count covers the first seconds of a flood, "+
				"while entries are still being added", b.o.conns))
		case "flood":
			ms = append(ms, fmt.Sprintf("`flood`, tables full, steady state: a new tuple per packet too, counted after a %s "+
				"warm-up into tables of the default size, so what a director under a sustained flood of new tuples sees. "+
				"Conntrack is at nf_conntrack_max and makes room for each new entry by evicting an unreplied one (early_drop), "+
				"so it keeps admitting new flows. raftlb's table has no free slot, so by design it forwards each new flow to the "+
				"realserver Maglev picks without recording it, and counts it as `conn_table_full`. On `raftlb-dr` and "+
				"`raftlb-tun` that is all: such a flow keeps its realserver while the realservers stay the same, as Maglev gives "+
				"it the same answer every time, but it is not announced to the other directors and does not count in lc/wlc. "+
				"On `raftlb-nat` the reverse-NAT table, as big as the connection table and written for every new flow, recorded "+
				"or not, is full as well, so each new flow's reverse entry fails too (`rnat_table_full`) and its replies cannot "+
				"be translated back to the VIP: in this state a new NAT flow cannot complete. `raftlb-nat`'s `flood` figure is "+
				"therefore the rate at which it forwards the first packets of flows it can no longer serve, while conntrack "+
				"keeps admitting new flows: no like-for-like comparison with the nft paths", b.o.floodWarmup))
		}
	}
	text := fmt.Sprintf("Mixes, from one trafgen: %s.", strings.Join(ms, "; "))
	if b.ranMix("churn") || b.ranMix("flood") {
		text += fmt.Sprintf(" A new tuple per packet is a random source address from 192.0.2.%d to 192.0.2.%d (no lab address "+
			"or broadcast among them: the director's stack would drop its own as a martian, which the XDP paths never check) "+
			"and a random source port from %d to %d, one of %d tuples.", srcFirst, srcLast, portFirst, portLast, newTupleCount)
	}
	p("%s\n\n", wrap(text, 118))
}

// wrap breaks text into lines of at most width bytes, between words.
func wrap(text string, width int) string {
	var w strings.Builder
	n := 0
	for _, word := range strings.Fields(text) {
		switch {
		case n == 0:
		case n+1+len(word) > width:
			w.WriteByte('\n')
			n = 0
		default:
			w.WriteByte(' ')
			n++
		}
		w.WriteString(word)
		n += len(word)
	}
	return w.String()
}

// writeTables shows how full the director's state tables were in the
// counted windows with a new tuple per packet.
func (b *bench) writeTables(p func(string, ...any), tabs fills) {
	type row struct {
		path string
		m    mix
		fs   []tableFill
	}
	var rows []row
	for _, m := range b.mixes {
		for _, pt := range b.paths {
			if fs := tabs[pt.name][m.name]; len(fs) > 0 {
				rows = append(rows, row{pt.name, m, fs})
			}
		}
	}
	if len(rows) == 0 {
		return
	}
	p("\n### State tables with a new tuple per packet\n\n")
	p("Read at the start and the end of every counted window (medians over the cycles), with the packets the realservers\n")
	p("counted between the two reads. New entries, evicted, table full and reverse-NAT full are per counted packet: evicted\n")
	p("is an unreplied conntrack entry removed to make room for a new one (early_drop); table full is, for raftlb,\n")
	p("`conn_table_full` (and `conn_table_busy`), a new flow forwarded without being recorded, and for conntrack a packet\n")
	p("dropped because nothing could be evicted; reverse-NAT full is `rnat_table_full` on `raftlb-nat`, a new flow whose\n")
	p("replies cannot be translated back to the VIP. Full at window start means at least 99%% of the table's limit in use\n")
	p("at the window's start, growing by less than 1%% of it during the window; at limit, at least 99%% in use at its end.\n\n")
	p("| path | mix | table, limit | entries at window start | at window end | new entries | evicted | table full | reverse-NAT full | full at window start | at limit at window end |\n")
	p("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
	var notFull, atLimit, natFlood []string
	for _, rw := range rows {
		med := func(f func(tableFill) float64) float64 {
			var v []float64
			for _, tf := range rw.fs {
				v = append(v, f(tf))
			}
			return summarize(v).med
		}
		share := func(n func(tableSnap) uint64) float64 {
			return med(func(tf tableFill) float64 { return tf.share(n) })
		}
		first := rw.fs[0].start
		raftlb, limit := first.slots > 0, float64(first.limit())
		table := fmt.Sprintf("conntrack, nf_conntrack_max %d", first.capacity)
		if raftlb {
			table = fmt.Sprintf("raftlb, %d slots (capacity %d)", first.slots, first.capacity)
		}
		start := med(func(tf tableFill) float64 { return float64(tf.start.entries) })
		end := med(func(tf tableFill) float64 { return float64(tf.end.entries) })
		created := med(tableFill.created)
		evicted, refused, rnat := "–", fmt.Sprintf("%.2f", share(func(s tableSnap) uint64 { return s.refused })), "–"
		if first.nat {
			r := share(func(s tableSnap) uint64 { return s.rnatRefused })
			rnat = fmt.Sprintf("%.2f", r)
			if rw.m.tables == full {
				natFlood = append(natFlood, fmt.Sprintf("`%s` %.2f", rw.path, r))
			}
		}
		if !raftlb {
			evicted = fmt.Sprintf("%.2f", share(func(s tableSnap) uint64 { return s.evicted }))
			refused = fmt.Sprintf("%.2f", share(func(s tableSnap) uint64 { return s.dropped }))
		}
		fullAt, nFull := inRuns(rw.fs, tableFill.full)
		if rw.m.tables == full && nFull < len(rw.fs) {
			fullAt = "**" + fullAt + "**"
			notFull = append(notFull, rw.path)
		}
		limitAt, nLimit := inRuns(rw.fs, tableFill.atLimit)
		if rw.m.tables == filling && nLimit > 0 {
			runs := limitAt
			if nLimit == len(rw.fs) {
				runs = "every run"
			}
			atLimit = append(atLimit, fmt.Sprintf("`%s` (%s)", rw.path, runs))
			limitAt = "**" + limitAt + "**"
		}
		p("| %s | %s | %s | %.0f (%.1f%%) | %.0f (%.1f%%) | %.2f | %s | %s | %s | %s | %s |\n", rw.path, rw.m.name, table,
			start, 100*start/limit, end, 100*end/limit, created, evicted, refused, rnat, fullAt, limitAt)
	}
	if len(notFull) > 0 {
		p("\n**Not full at the start of every `flood` window**: %s. Those runs measured a table still filling in part;\n", strings.Join(notFull, ", "))
		p("a longer `-flood-warmup` gives the steady state.\n")
	}
	if len(atLimit) > 0 {
		p("\n%s\n", wrap(fmt.Sprintf("**At its limit by the end of a `churn` window**: %s. `churn` is meant to measure "+
			"tables still filling; a table at its limit spent part of the window evicting an entry for each new one "+
			"(conntrack, early_drop) or forwarding new flows unrecorded (raftlb) instead. raftlb gets a table of %d "+
			"connections there while conntrack stays at nf_conntrack_max, so a conntrack row here is measured in a harder "+
			"state than raftlb's and favours raftlb; `flood` compares both tables full.", strings.Join(atLimit, ", "), b.o.conns), 118))
	}
	p("\nraftlb's limit is its slots: a table of two-choice, eight-way buckets takes a third more entries than its nominal\n")
	p("capacity, and refuses inserts only as its last slots go. With the table full, no counted packet adds an entry: each\n")
	p("new flow is forwarded unrecorded. Table full falls short of 1 per counted packet by the few per cent of packets whose\n")
	p("tuple is already in the table (it holds a few hundred thousand of the generator's %d), which go by their entry.\n", newTupleCount)
	if len(natFlood) > 0 {
		p("\n%s\n", wrap(fmt.Sprintf("Reverse-NAT full in `flood`: %s per counted packet. The reverse-NAT table is as big "+
			"as the connection table and takes an entry for every new NAT flow, recorded or not, so it is full too: a new "+
			"flow's reverse entry finds no slot, and its replies cannot be translated back to the VIP. In this state "+
			"`raftlb-nat` forwards new flows that cannot complete, while conntrack keeps admitting new flows by evicting "+
			"unreplied entries: `raftlb-nat`'s `flood` row is the rate of a director that has stopped admitting new NAT "+
			"flows, not of one serving them.", strings.Join(natFlood, ", ")), 118))
	}
}

// inRuns says in how many of the runs f holds: yes, no, or in n of m
// runs; n is that count.
func inRuns(fs []tableFill, f func(tableFill) bool) (string, int) {
	n := 0
	for _, tf := range fs {
		if f(tf) {
			n++
		}
	}
	switch {
	case n == 0:
		return "no", n
	case n == len(fs):
		return "yes", n
	}
	return fmt.Sprintf("in %d of %d runs", n, len(fs)), n
}
