package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/raftlb/raftlb/dataplane"
)

type options struct {
	cycles int
	warmup time.Duration // from trafgen's start to the first count
	// floodWarmup replaces warmup for the flood mix on the paths with a
	// state table: the time the table takes to fill.
	floodWarmup time.Duration
	window      time.Duration // counted time
	maxPkts     int           // trafgen's own bound, for a run of warmup+window
	conns       int           // raftlb connection-table capacity, new tuple per packet from empty tables
	flowConns   int           // and for the other mixes (0: the default)
	out         string
	paths       string // comma-separated path names; empty for all
	mixes       string // comma-separated mix names; empty for all
	// perf: after the cycles, profile every path but direct with every
	// mix (perfRuns rounds) for the director's own cost.
	perf     bool
	perfRuns int
	perfDir  string // keep perf data and reports here; empty: a temporary directory
}

func main() {
	var o options
	flag.IntVar(&o.cycles, "cycles", 10, "cycles; each runs every path and flow mix once, in random order")
	flag.DurationVar(&o.warmup, "warmup", 400*time.Millisecond, "time from the generator's start to the first count")
	flag.DurationVar(&o.floodWarmup, "flood-warmup", 3*time.Second, "warm-up of the flood mix on the paths with a state table, long enough to fill it")
	flag.DurationVar(&o.window, "window", 1500*time.Millisecond, "counted time per run")
	flag.IntVar(&o.maxPkts, "max-packets", 3_000_000, "packet limit of a generator run with the default warm-up (a longer one gets proportionally more)")
	flag.IntVar(&o.conns, "conns", 1<<21, "raftlb connection-table capacity for the churn mix, a new tuple per packet from empty tables (it fills the default at line rate)")
	flag.IntVar(&o.flowConns, "flow-conns", 0, "raftlb connection-table capacity for the other mixes, flood included; 0 is the dataplane's default")
	flag.StringVar(&o.out, "o", "bin/bench-pps.md", "markdown section to write")
	flag.BoolVar(&o.perf, "perf", true, "after the cycles, profile each path and mix with perf record for the director's own ns/packet")
	flag.IntVar(&o.perfRuns, "perf-runs", 1, "profiled runs per path and mix")
	flag.StringVar(&o.perfDir, "perf-dir", "", "keep perf data and reports in this directory (default: a temporary one, removed)")
	flag.StringVar(&o.paths, "paths", "", "comma-separated paths to run (default all): "+strings.Join(names(allPaths, pathName), ","))
	flag.StringVar(&o.mixes, "mixes", "", "comma-separated traffic mixes to run (default all): "+strings.Join(names(allMixes, mixName), ","))
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runBench(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pps:", err)
		os.Exit(1)
	}
}

// A path is what the director runs during a measurement.
type path struct {
	name string
	// setup installs the path in the lab.
	setup func(b *bench) (director, error)
	// direct: the client sends to realserver 0 itself, no director.
	direct bool
	// own lists the functions that run only at the director on this
	// path: a perf sample with one of them on its call chain is the
	// director's own work (perf.go says why these); none for direct.
	own []string
}

// A director is a path installed in the lab.
type director struct {
	teardown func() error
	// table reads the director's state table; nil on a path without one.
	table func() (tableSnap, error)
}

// A mix is the traffic: trafgen's packet description, and what it does
// to the director's state tables.
type mix struct {
	name, desc string
	udp        string // trafgen's udp() and the ipv4 source
	tables     tableUse
}

// tableUse is what a mix does to the director's state tables.
type tableUse int

const (
	// fixedFlows: the warm-up records the mix's flows, then every packet
	// finds its entry.
	fixedFlows tableUse = iota
	// filling: a new entry per packet into empty tables (raftlb's with
	// -conns capacity, which a run cannot fill).
	filling
	// full: a new tuple per packet after -flood-warmup, into tables of
	// the default size, full by then: conntrack evicts an entry for each
	// new one, raftlb forwards new flows without recording them.
	full
)

// A new tuple per packet is a random source address, 192.0.2.srcFirst to
// 192.0.2.srcLast, and a random source port, portFirst to portLast. The
// addresses leave out every lab address (the client .10, the director's
// front .20, the realservers .31–.33; TestNewTupleSources) and the
// subnet's broadcast .255: the director's stack drops a packet from its
// own or a broadcast address as a martian, which the XDP paths never
// check, so such sources cost the nft paths packets the others forward;
// the other lab addresses belong to hosts that send no flood.
const (
	srcFirst, srcLast   = 64, 254
	portFirst, portLast = 1024, 65535
	newTupleCount       = (srcLast - srcFirst + 1) * (portLast - portFirst + 1)
)

// newTuples is trafgen's ipv4 source and udp() for a new tuple per
// packet: drnd(min, max) draws from min to max, both included, for every
// packet; sa[3] is the address's last byte.
var newTuples = fmt.Sprintf("saddr=192.0.2.0, sa[3]=drnd(%d, %d)), udp(sp=drnd(%d, %d), dp=9000",
	srcFirst, srcLast, portFirst, portLast)

var allMixes = []mix{
	{"1flow", "one flow", "saddr=" + clientAddr + "), udp(sp=40000, dp=9000", fixedFlows},
	{"59k", "~59k flows", "saddr=" + clientAddr + "), udp(sp=dinc(1024, 60000), dp=9000", fixedFlows},
	{"churn", "a new tuple per packet, tables filling", newTuples, filling},
	{"flood", "a new tuple per packet, tables full", newTuples, full},
}

// allPaths lists every path in report order.
var allPaths = []path{
	{name: "direct", direct: true, setup: func(*bench) (director, error) { return director{teardown: func() error { return nil }}, nil }},
	{name: "bounce", setup: (*bench).setupBounce, own: xdpOwn},
	{name: "raftlb-dr", setup: raftlb(dataplane.DR), own: xdpOwn},
	{name: "raftlb-tun", setup: raftlb(dataplane.TUN), own: xdpOwn},
	{name: "raftlb-nat", setup: raftlb(dataplane.NAT), own: natOwn},
	{name: "nft-jhash", setup: nft("jhash ip saddr . udp sport mod 3 seed 0xcafe"), own: nftOwn},
	{name: "nft-numgen", setup: nft("numgen random mod 3"), own: nftOwn},
}

func pathName(p path) string { return p.name }
func mixName(m mix) string   { return m.name }

func names[T any](all []T, name func(T) string) []string {
	var out []string
	for _, x := range all {
		out = append(out, name(x))
	}
	return out
}

// pick returns the elements of all named in list (comma-separated), in
// all's order; an empty list picks all.
func pick[T any](all []T, name func(T) string, list string) ([]T, error) {
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if !slices.Contains(names(all, name), n) {
			return nil, fmt.Errorf("unknown name %q (want one of %s)", n, strings.Join(names(all, name), ","))
		}
		want[n] = true
	}
	var out []T
	for _, x := range all {
		if want[name(x)] {
			out = append(out, x)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty selection")
	}
	return out, nil
}

type bench struct {
	o      options
	paths  []path // selected, in report order
	mixes  []mix  // selected, in report order
	lab    *lab
	dir    string // trafgen configs
	sink   *ebpf.Program
	count  *ebpf.Map
	links  []link.Link
	memory map[int]string // connection-table footprint by capacity, found on the first run of each
	mix    mix            // of the trial being set up
}

func runBench(ctx context.Context, o options) error {
	for _, tool := range []string{"ip", "nft", "trafgen"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("find %s: %w", tool, err)
		}
	}
	if o.perf {
		if _, err := exec.LookPath("perf"); err != nil {
			return fmt.Errorf("find perf (needed for the director's own cost; -perf=false skips it): %w", err)
		}
		if o.perfRuns < 1 {
			return fmt.Errorf("-perf-runs %d: want at least 1", o.perfRuns)
		}
	}
	b := &bench{o: o, lab: &lab{prefix: fmt.Sprintf("rlbpb%d", os.Getpid())}, memory: make(map[int]string)}
	var err error
	if b.paths, err = pick(allPaths, pathName, o.paths); err != nil {
		return fmt.Errorf("parse -paths: %w", err)
	}
	if b.mixes, err = pick(allMixes, mixName, o.mixes); err != nil {
		return fmt.Errorf("parse -mixes: %w", err)
	}
	defer b.close()
	if b.dir, err = os.MkdirTemp("", "rlbpb"); err != nil {
		return fmt.Errorf("create config dir: %w", err)
	}
	if err := b.lab.up(); err != nil {
		return fmt.Errorf("bring up lab: %w", err)
	}
	if err := b.writeConfigs(); err != nil {
		return err
	}
	if b.sink, b.count, err = newSink(); err != nil {
		return err
	}
	for i := range nReals {
		for _, dev := range []string{"eth0", "eth1"} {
			if err := b.attachSink(fmt.Sprintf("r%d", i), dev); err != nil {
				return err
			}
		}
	}
	res, tabs := make(results), make(fills)
	start := time.Now()
	for c := range o.cycles {
		type trial struct {
			p path
			m mix
		}
		var ts []trial
		for _, p := range b.paths {
			for _, m := range b.mixes {
				ts = append(ts, trial{p, m})
			}
		}
		rand.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
		for _, t := range ts {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("run cycle %d: %w", c, err)
			}
			w, err := b.trial(ctx, t.p, t.m, "")
			if err != nil {
				return fmt.Errorf("run %s %s: %w", t.p.name, t.m.name, err)
			}
			res.add(t.p.name, t.m.name, c, w.pps())
			if w.table != nil {
				tabs.add(t.p.name, t.m.name, *w.table)
			}
		}
		fmt.Fprintf(os.Stderr, "pps: cycle %d/%d done after %s\n", c+1, o.cycles, time.Since(start).Round(time.Second))
	}
	var prof profiles
	if o.perf {
		if prof, err = b.profileAll(ctx); err != nil {
			return err
		}
	}
	return b.writeReport(res, tabs, prof, time.Since(start))
}

func (b *bench) close() {
	for _, l := range b.links {
		l.Close()
	}
	if b.sink != nil {
		b.sink.Close()
		b.count.Close()
	}
	b.lab.down()
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// attachSink attaches the sink to dev's tcx ingress in namespace ns.
func (b *bench) attachSink(ns, dev string) error {
	return b.lab.do(ns, func() error {
		nl, err := netlink.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("look up %s: %w", dev, err)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: nl.Attrs().Index, Program: b.sink, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach sink to %s in %s: %w", dev, ns, err)
		}
		b.links = append(b.links, l)
		return nil
	})
}

func attachGeneric(dev string, p *ebpf.Program) (link.Link, error) {
	nl, err := netlink.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", dev, err)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: p, Interface: nl.Attrs().Index, Flags: link.XDPGenericMode})
	if err != nil {
		return nil, fmt.Errorf("attach xdp to %s: %w", dev, err)
	}
	return l, nil
}

// writeConfigs writes one trafgen config per mix, to the VIP through the
// director and to realserver 0 directly. 60-byte frames (64 on the wire).
func (b *bench) writeConfigs() error {
	for _, m := range b.mixes {
		for _, direct := range []bool{false, true} {
			da, dst := dirFrontMAC.String(), vipAddr
			if direct {
				da, dst = realFrontMAC(0).String(), realFront(0)
			}
			cfg := fmt.Sprintf("{\n  eth(da=%s, sa=%s),\n  ipv4(id=dinc(), ttl=64, daddr=%s, %s),\n  fill(0x41, 18)\n}\n",
				da, clientMAC, dst, m.udp)
			if err := os.WriteFile(b.cfgPath(m, direct), []byte(cfg), 0o644); err != nil {
				return fmt.Errorf("write trafgen config: %w", err)
			}
		}
	}
	return nil
}

func (b *bench) cfgPath(m mix, direct bool) string {
	if direct {
		return filepath.Join(b.dir, m.name+"-direct.trafgen")
	}
	return filepath.Join(b.dir, m.name+".trafgen")
}

func (b *bench) setupBounce() (director, error) {
	p, err := newBounce(realFrontMAC(0), dirFrontMAC)
	if err != nil {
		return director{}, err
	}
	var l link.Link
	err = b.lab.do("d", func() error {
		l, err = attachGeneric("eth0", p)
		return err
	})
	if err != nil {
		p.Close()
		return director{}, err
	}
	return director{teardown: func() error {
		err := l.Close()
		p.Close()
		return err
	}}, nil
}

// connTableSize is the capacity for the current mix: a new tuple per
// packet from empty tables gets a table it cannot fill in a run; the
// other mixes run with the director's default, as a director would (a
// table many times bigger than its flows costs TLB and cache misses on
// every packet), and so does the flood, which is to fill it.
func (b *bench) connTableSize() int {
	if b.mix.tables == filling {
		return b.o.conns
	}
	return b.o.flowConns
}

func raftlb(m dataplane.Method) func(*bench) (director, error) {
	return func(b *bench) (director, error) {
		var d *dataplane.Dataplane
		err := b.lab.do("d", func() error {
			var err error
			d, err = dataplane.Open(dataplane.Config{
				FrontIface:    "eth0",
				InsideIface:   "eth1",
				AttachMode:    dataplane.AttachGeneric,
				ConnTableSize: b.connTableSize(),
				KeepSysctls:   true, // the nftables paths need forwarding on
				Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			return err
		})
		if err != nil {
			return director{}, fmt.Errorf("open dataplane: %w", err)
		}
		vip := netip.MustParseAddr(vipAddr)
		svc := dataplane.Service{
			ServiceKey: dataplane.ServiceKey{VIP: vip, Port: vipPort, Proto: dataplane.UDP},
			Scheduler:  dataplane.MH,
		}
		for i := range nReals {
			a := realFront(i)
			if m == dataplane.NAT {
				a = realInside(i)
			}
			svc.Realservers = append(svc.Realservers, dataplane.Realserver{
				Addr: netip.MustParseAddr(a), Port: vipPort, Weight: 1, Method: m,
			})
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		teardown := func() error {
			cancel()
			err := <-done
			if cerr := d.Close(); err == nil {
				err = cerr
			}
			return err
		}
		// Run consumes the event ring and sweeps, as in a director.
		go func() { done <- d.Run(ctx, func([]dataplane.Event) {}) }()
		if err := d.Apply(dataplane.State{Services: []dataplane.Service{svc}}); err != nil {
			teardown()
			return director{}, fmt.Errorf("apply: %w", err)
		}
		if err := d.SetLease(vip, time.Now().Add(time.Hour)); err != nil {
			teardown()
			return director{}, fmt.Errorf("set lease: %w", err)
		}
		if size := b.connTableSize(); b.memory[size] == "" {
			if b.memory[size], err = connMemory(d); err != nil {
				teardown()
				return director{}, err
			}
		}
		return director{teardown: teardown, table: func() (tableSnap, error) { return connTable(d, m == dataplane.NAT) }}, nil
	}
}

func nft(pick string) func(*bench) (director, error) {
	return func(b *bench) (director, error) {
		var targets []string
		for i := range nReals {
			targets = append(targets, fmt.Sprintf("%d : %s", i, realInside(i)))
		}
		rules := fmt.Sprintf(`table ip rlbpb {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr %s udp dport %d dnat to %s map { %s }
  }
}
`, vipAddr, vipPort, pick, strings.Join(targets, ", "))
		f := filepath.Join(b.dir, "lb.nft")
		if err := os.WriteFile(f, []byte(rules), 0o644); err != nil {
			return director{}, fmt.Errorf("write ruleset: %w", err)
		}
		if err := b.lab.exec("d", "nft", "-f", f); err != nil {
			return director{}, err
		}
		return director{
			teardown: func() error { return b.lab.exec("d", "nft", "delete", "table", "ip", "rlbpb") },
			table:    func() (tableSnap, error) { return b.lab.conntrackTable("d") },
		}, nil
	}
}

// A window is one counted stretch of a run.
type window struct {
	packets uint64 // received by the realservers
	dur     time.Duration
	table   *tableFill // the director's state table, read with a new tuple per packet
}

func (w window) pps() float64 { return float64(w.packets) / w.dur.Seconds() }

// trial runs one generator against one path and counts what the
// realservers receive. With perfData set, perf records every CPU during
// the counted window into that file.
func (b *bench) trial(ctx context.Context, p path, m mix, perfData string) (window, error) {
	// Every run starts with no connection state anywhere.
	if err := b.lab.do("d", func() error { return netlink.ConntrackTableFlush(netlink.ConntrackTable) }); err != nil {
		return window{}, fmt.Errorf("flush conntrack: %w", err)
	}
	b.mix = m
	d, err := p.setup(b)
	if err != nil {
		return window{}, err
	}
	warmup, table := b.o.warmup, d.table
	if m.tables == full && d.table != nil {
		warmup = b.o.floodWarmup
	}
	if m.tables == fixedFlows {
		table = nil
	}
	var rec *recorder
	if perfData != "" {
		// Started after the setup, so perf knows the path's BPF programs.
		rec, err = startRecorder(ctx, perfData, warmup+b.o.window)
		if err != nil {
			err = fmt.Errorf("start perf: %w", err)
		}
	}
	var w window
	if err == nil {
		w, err = b.measure(ctx, b.cfgPath(m, p.direct), warmup, rec, table)
		if rec != nil {
			if ferr := rec.finish(); err == nil {
				err = ferr
			}
		}
	}
	if terr := d.teardown(); err == nil {
		err = terr
	}
	return w, err
}

// measure runs the generator with cfg and counts, after the warm-up, for
// the window. rec, if any, records from just before the first count to
// just after the last. table, if any, is read just before the recording
// and the first count, and just after the last count and the recording;
// the sink is counted at each of those reads too (tableAt), and the
// packets between those counts are the ones the table's deltas are
// shared out over, so that per-packet shares are exact.
func (b *bench) measure(ctx context.Context, cfg string, warmup time.Duration, rec *recorder, table func() (tableSnap, error)) (window, error) {
	limit := warmup + b.o.window + 5*time.Second
	if rec != nil {
		limit += 20 * time.Second // perf's acks
	}
	tctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	// One generator on one CPU; it stops by itself at the packet limit
	// (-max-packets, raised in proportion for a longer warm-up), at the
	// deadline, or when told to.
	maxPkts := max(b.o.maxPkts, int(int64(b.o.maxPkts)*int64(warmup+b.o.window)/int64(b.o.warmup+b.o.window)))
	cmd := exec.CommandContext(tctx, "trafgen", "-o", "eth0", "-c", cfg, "-P", "1", "-n", fmt.Sprint(maxPkts))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	// Started from a thread in the client's namespace, so born there.
	if err := b.lab.do("c", cmd.Start); err != nil {
		return window{}, fmt.Errorf("start trafgen: %w", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	stop := func() {
		// trafgen and its fork share the group started above.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-waited:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-waited
		}
	}
	defer stop()
	select {
	case <-time.After(warmup):
	case err := <-waited:
		waited <- err
		return window{}, fmt.Errorf("trafgen ended early: %s: %s", errString(err), out.String())
	case <-tctx.Done():
		return window{}, fmt.Errorf("warm up: %w", tctx.Err())
	}
	var (
		tf     *tableFill
		s0, s1 uint64 // the sink's counts at the table reads
	)
	if table != nil {
		tf = new(tableFill)
		var err error
		if tf.start, s0, err = b.tableAt(table); err != nil {
			return window{}, err
		}
	}
	if rec != nil {
		if err := rec.enable(); err != nil {
			return window{}, err
		}
	}
	c0, err := sinkCount(b.count)
	t0 := time.Now()
	if err != nil {
		return window{}, err
	}
	select {
	case <-time.After(b.o.window):
	case <-tctx.Done():
		return window{}, fmt.Errorf("count: %w", tctx.Err())
	}
	c1, err := sinkCount(b.count)
	t1 := time.Now()
	if err != nil {
		return window{}, err
	}
	if rec != nil {
		if err := rec.disable(); err != nil {
			return window{}, err
		}
	}
	if c1 <= c0 {
		return window{}, fmt.Errorf("no packets reached the realservers: %s", out.String())
	}
	if tf != nil {
		if tf.end, s1, err = b.tableAt(table); err != nil {
			return window{}, err
		}
		tf.packets = s1 - s0
	}
	return window{c1 - c0, t1.Sub(t0), tf}, nil
}

// tableAt reads the director's table with the sink's count at that
// moment: the mean of the counts just before and just after the read,
// as packets keep flowing while it takes place.
func (b *bench) tableAt(table func() (tableSnap, error)) (tableSnap, uint64, error) {
	before, err := sinkCount(b.count)
	if err != nil {
		return tableSnap{}, 0, err
	}
	s, err := table()
	if err != nil {
		return tableSnap{}, 0, err
	}
	after, err := sinkCount(b.count)
	if err != nil {
		return tableSnap{}, 0, err
	}
	return s, before + (after-before)/2, nil
}

func errString(err error) string {
	if err == nil {
		return "exit 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.String()
	}
	return err.Error()
}

// connMemory describes the connection and reverse-NAT tables' footprint.
func connMemory(d *dataplane.Dataplane) (string, error) {
	st, err := d.Stats()
	if err != nil {
		return "", fmt.Errorf("read table footprint: %w", err)
	}
	return fmt.Sprintf("capacity %d connections in %d slots; connection and reverse-NAT tables together %d MiB, "+
		"%.0f B per connection of capacity (%.0f B per slot and table)",
		st.ConnCapacity, st.ConnSlots, st.TableBytes>>20,
		float64(st.TableBytes)/float64(st.ConnCapacity), float64(st.TableBytes)/float64(2*st.ConnSlots)), nil
}
