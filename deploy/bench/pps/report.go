package main

import (
	"fmt"
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

func (b *bench) writeReport(r results, took time.Duration) error {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("## Packets per second through a director (netns lab)\n\n")
	p("`go run ./deploy/bench/pps` (part of `make bench`, root): client → bridge → director → bridge → 3 realservers,\n")
	p("veth pairs, generic XDP, 64-byte UDP frames from one trafgen on one CPU, counted and dropped on the realservers by a\n")
	p("TC program (tcx ingress). The sink is TC, not XDP, because generic XDP copies every skb with less than 256 bytes of\n")
	p("headroom: trafgen's frames have 16, so an XDP sink charged `direct` and `nft-*` a copy the director never made, and\n")
	p("charged `raftlb-tun` a second one (the director's encapsulation leaves 252). The director's own generic XDP copy\n")
	p("(once per packet on every XDP path, none on `nft-*`) is part of its cost in this lab.\n")
	p("%d cycles; each cycle runs every path × traffic mix once in random order (%s counted per run after %s warm-up);\n",
		b.o.cycles, b.o.window, b.o.warmup)
	p("ratios are paired within a cycle. Medians, with [25th–75th percentile] and (min–max) across cycles. Total %s.\n\n", took.Round(time.Second))
	if len(b.paths) < len(allPaths) || len(b.mixes) < len(allMixes) {
		p("**Partial run**: paths %s; mixes %s. Rows, ratios and targets that need another path are left out.\n\n",
			strings.Join(names(b.paths, pathName), ", "), strings.Join(names(b.mixes, mixName), ", "))
	}
	p("Paths: `direct` client straight to a realserver (no director); `bounce` an XDP program that only rewrites MACs and\n")
	p("transmits (XDP_TX); `raftlb-*` the director dataplane (Maglev, connection table, events consumed by Run);\n")
	p("`nft-*` nftables DNAT with conntrack, endpoint picked by a `jhash` or `numgen random` map (kube-proxy's nftables mode).\n")
	p("Everything runs in the generator's softirq on one CPU, so packets/s = 1 / (cost per packet); about 1.4 µs of each\n")
	p("packet is the generator, bridge, veths and sink, the same for every path, which compresses end-to-end ratios.\n")
	p("A path's own cost is its ns/packet minus `direct`'s, paired by cycle: the director hop, including the second\n")
	p("bridge crossing and the director's veth pair that every path pays (most of `bounce`'s own cost is that).\n\n")

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
	if b.ran("direct") && len(b.paths) > 1 {
		p("\n### Own cost per packet (ns, minus `direct`)\n\n")
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
	// The ratio of two paths' own costs, paired by cycle.
	costRatio := func(a, bb, mix string) stat {
		var v []float64
		for c, pa := range r[a][mix] {
			pb, ok1 := r[bb][mix][c]
			pd, ok2 := r["direct"][mix][c]
			if ok1 && ok2 {
				v = append(v, (1e9/pa-1e9/pd)/(1e9/pb-1e9/pd))
			}
		}
		return summarize(v)
	}
	// need lists the paths and mix a target is computed from.
	type need struct {
		paths []string
		mix   string
	}
	pr := func(a, bb, mix string) (stat, need) {
		return summarize(r.paired(a, bb, mix, ratio)), need{[]string{a, bb}, mix}
	}
	cr := func(a, bb, mix string) (stat, need) {
		return costRatio(a, bb, mix), need{[]string{a, bb, "direct"}, mix}
	}
	type row struct {
		t target
		n need
	}
	mk := func(what string, goal float64, below bool, f func(a, bb, mix string) (stat, need), a, bb, mix string) row {
		s, n := f(a, bb, mix)
		return row{target{what, s, goal, below}, n}
	}
	rows := []row{
		mk("raftlb-dr / bounce, one flow", 0.9, false, pr, "raftlb-dr", "bounce", "1flow"),
		mk("raftlb-dr / bounce, ~59k flows", 0.9, false, pr, "raftlb-dr", "bounce", "59k"),
		mk("raftlb-tun / bounce, one flow", 0.9, false, pr, "raftlb-tun", "bounce", "1flow"),
		mk("raftlb-tun / bounce, ~59k flows", 0.9, false, pr, "raftlb-tun", "bounce", "59k"),
		mk("own cost raftlb-nat / nft-jhash, ~59k flows", 0.5, true, cr, "raftlb-nat", "nft-jhash", "59k"),
		mk("own cost raftlb-nat / nft-numgen, ~59k flows", 0.5, true, cr, "raftlb-nat", "nft-numgen", "59k"),
		mk("own cost raftlb-dr / nft-jhash, ~59k flows", 0.5, true, cr, "raftlb-dr", "nft-jhash", "59k"),
		mk("raftlb-nat / nft-jhash, new tuple per packet", 2, false, pr, "raftlb-nat", "nft-jhash", "churn"),
		mk("raftlb-nat / nft-numgen, new tuple per packet", 2, false, pr, "raftlb-nat", "nft-numgen", "churn"),
		mk("raftlb-dr / nft-numgen, new tuple per packet", 2, false, pr, "raftlb-dr", "nft-numgen", "churn"),
	}
	var targets []target
	for _, rw := range rows {
		if b.ranMix(rw.n.mix) && !slices.ContainsFunc(rw.n.paths, func(s string) bool { return !b.ran(s) }) {
			targets = append(targets, rw.t)
		}
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
	}
	if b.memory != "" {
		p("\n### Connection table\n\n%s.\n", b.memory)
		p("The table is a preallocated BPF hash (`Config.ConnTableSize`, default 262144 entries; this run used %d so a new\n", b.o.conns)
		p("tuple per packet never fills it); NAT connections also hold a reverse entry. Memory is the kernel's own accounting.\n")
	}
	if err := os.MkdirAll(dirOf(b.o.out), 0o755); err != nil {
		return fmt.Errorf("create report dir: %w", err)
	}
	if err := os.WriteFile(b.o.out, []byte(w.String()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
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
