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

func (b *bench) writeReport(r results, took time.Duration) error {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	paths := []string{"direct", "bounce", "raftlb-dr", "raftlb-tun", "raftlb-nat", "nft-jhash", "nft-numgen"}
	p("## Packets per second through a director (netns lab)\n\n")
	p("`go run ./deploy/bench/pps` (part of `make bench`, root): client → bridge → director → bridge → 3 realservers,\n")
	p("veth pairs, generic XDP, 64-byte UDP frames from one trafgen on one CPU, counted and dropped by XDP on the realservers.\n")
	p("%d cycles; each cycle runs every path × traffic mix once in random order (%s counted per run after %s warm-up);\n",
		b.o.cycles, b.o.window, b.o.warmup)
	p("ratios are paired within a cycle. Medians, with [25th–75th percentile] and (min–max) across cycles. Total %s.\n\n", took.Round(time.Second))
	p("Paths: `direct` client straight to a realserver (no director); `bounce` an XDP program that only rewrites MACs and\n")
	p("transmits (XDP_TX); `raftlb-*` the director dataplane (Maglev, connection table, events consumed by Run);\n")
	p("`nft-*` nftables DNAT with conntrack, endpoint picked by a `jhash` or `numgen random` map (kube-proxy's nftables mode).\n")
	p("Everything runs in the generator's softirq on one CPU, so packets/s = 1 / (cost per packet); about 1.4 µs of each\n")
	p("packet is the generator, bridge, veths and sink, the same for every path, which compresses end-to-end ratios.\n")
	p("A path's own cost is its ns/packet minus `direct`'s, paired by cycle: the director hop, including the second\n")
	p("bridge crossing and the director's veth pair that every path pays (most of `bounce`'s own cost is that).\n\n")

	p("### Packets per second\n\n| path |")
	for _, m := range mixes {
		p(" %s |", m.desc)
	}
	p("\n| --- |%s\n", strings.Repeat(" ---: |", len(mixes)))
	for _, path := range paths {
		p("| %s |", path)
		for _, m := range mixes {
			s := summarize(r.values(path, m.name))
			p(" %.0fk [%.0fk–%.0fk] |", s.med/1e3, s.q1/1e3, s.q3/1e3)
		}
		p("\n")
	}
	p("\n### Own cost per packet (ns, minus `direct`)\n\n| path |")
	for _, m := range mixes {
		p(" %s |", m.desc)
	}
	p("\n| --- |%s\n", strings.Repeat(" ---: |", len(mixes)))
	for _, path := range paths[1:] {
		p("| %s |", path)
		for _, m := range mixes {
			s := summarize(r.nsOwn(path, m.name))
			p(" %.0f [%.0f–%.0f] |", s.med, s.q1, s.q3)
		}
		p("\n")
	}
	ratio := func(x, y float64) float64 { return x / y }
	p("\n### Paired ratios (packets/s)\n\n| ratio |")
	for _, m := range mixes {
		p(" %s |", m.desc)
	}
	p("\n| --- |%s\n", strings.Repeat(" ---: |", len(mixes)))
	for _, pr := range [][2]string{
		{"raftlb-dr", "bounce"}, {"raftlb-tun", "bounce"}, {"raftlb-nat", "bounce"},
		{"raftlb-nat", "nft-jhash"}, {"raftlb-nat", "nft-numgen"}, {"raftlb-dr", "nft-jhash"}, {"raftlb-dr", "nft-numgen"},
	} {
		p("| %s / %s |", pr[0], pr[1])
		for _, m := range mixes {
			s := summarize(r.paired(pr[0], pr[1], m.name, ratio))
			p(" %.2f [%.2f–%.2f] (%.2f–%.2f) |", s.med, s.q1, s.q3, s.lo, s.hi)
		}
		p("\n")
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
	targets := []target{
		{"raftlb-dr / bounce, one flow", summarize(r.paired("raftlb-dr", "bounce", "1flow", ratio)), 0.9, false},
		{"raftlb-dr / bounce, ~59k flows", summarize(r.paired("raftlb-dr", "bounce", "59k", ratio)), 0.9, false},
		{"raftlb-tun / bounce, one flow", summarize(r.paired("raftlb-tun", "bounce", "1flow", ratio)), 0.9, false},
		{"raftlb-tun / bounce, ~59k flows", summarize(r.paired("raftlb-tun", "bounce", "59k", ratio)), 0.9, false},
		{"own cost raftlb-nat / nft-jhash, ~59k flows", costRatio("raftlb-nat", "nft-jhash", "59k"), 0.5, true},
		{"own cost raftlb-nat / nft-numgen, ~59k flows", costRatio("raftlb-nat", "nft-numgen", "59k"), 0.5, true},
		{"own cost raftlb-dr / nft-jhash, ~59k flows", costRatio("raftlb-dr", "nft-jhash", "59k"), 0.5, true},
		{"raftlb-nat / nft-jhash, new tuple per packet", summarize(r.paired("raftlb-nat", "nft-jhash", "churn", ratio)), 2, false},
		{"raftlb-nat / nft-numgen, new tuple per packet", summarize(r.paired("raftlb-nat", "nft-numgen", "churn", ratio)), 2, false},
		{"raftlb-dr / nft-numgen, new tuple per packet", summarize(r.paired("raftlb-dr", "nft-numgen", "churn", ratio)), 2, false},
	}
	p("\n### Targets\n\n| target | median [IQR] | goal | met |\n| --- | ---: | ---: | --- |\n")
	for _, t := range targets {
		met := t.got.med >= t.goal
		cmp := "≥"
		if t.below {
			met, cmp = t.got.med <= t.goal, "≤"
		}
		p("| %s | %.2f [%.2f–%.2f] | %s %.2f | %s |\n", t.what, t.got.med, t.got.q1, t.got.q3, cmp, t.goal, yesNo(met))
	}
	p("\n### Connection table\n\n%s.\n", b.memory)
	p("The table is a preallocated BPF hash (`Config.ConnTableSize`, default 262144 entries; this run used %d so a new\n", b.o.conns)
	p("tuple per packet never fills it); NAT connections also hold a reverse entry. Memory is the kernel's own accounting.\n")
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
