package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The director's own cost from perf: cpu-clock samples on every CPU, with
// call graphs, while a run is counted. A sample is the director's if any
// frame of its call chain is one of the functions (or BPF programs) that
// run only at the director on that path; its own cost per packet is the
// time of those samples over the packets the realservers counted
// meanwhile. perf report --parent counts each sample once, under the
// innermost matching frame, so the functions may nest in one another.
// Unlike the ns/packet minus `direct`, this leaves out the second bridge
// crossing and the veth pair into the director, which every path pays.
//
// Why those functions are the director's alone, with the sink in TC:
//   - do_xdp_generic: only the director runs an XDP program. veth hands
//     every frame to the next device through __netif_rx (the backlog), so
//     what happens downstream of the director's XDP_TX (generic_xdp_tx,
//     veth_xmit) is a later, separate backlog entry, not nested inside
//     it. The other hops call do_xdp_generic too while any generic XDP
//     program is attached, and return at once: a few ns counted here.
//   - NAT: the director's XDP pass (do_xdp_generic), its tcx ingress
//     program (tc_front) and the redirect it asks for (skb_do_redirect,
//     bpf_redirect_neigh out of the inside interface). The tcx dispatch
//     around the program is inlined into __netif_receive_skb_core, which
//     every hop runs, and is not counted.
//   - nftables: ip_rcv and the functions it reaches by tail calls. ip_rcv
//     ends in NF_HOOK(..., ip_rcv_finish), compiled as a jump, and so do
//     ip_rcv_finish (into ip_forward), ip_forward (ip_forward_finish) and
//     ip_forward_finish (ip_output): their frames replace the caller's, so
//     forwarding and output (~30% of the director's time at ~59k flows)
//     sit under __netif_receive_skb_one_core with no ip_rcv frame. Nothing
//     else in the lab reaches the IP layer: the sink drops at tcx ingress,
//     before it.
//
// Checked on perf script call chains (bounce, raftlb-nat, raftlb-tun,
// nft-jhash at ~59k flows): no bridge, sink or receive frame is nested
// inside these functions, and no frame that only the director runs
// (routing, the XDP and TC programs, the copy, the transmit to the next
// veth) is found outside them.
const (
	perfFreq  = 4999
	perfSlack = 30 * time.Second // beyond a run's own length, for perf's start and its writing out
)

// bpfSym is how a profile names a BPF program: perf's
// bpf_prog_<tag>_<name>, summed over tags.
func bpfSym(name string) string { return "bpf_prog:" + name }

// symLabel is sym as the report shows it.
func symLabel(sym string) string {
	if n, ok := strings.CutPrefix(sym, "bpf_prog:"); ok {
		return "`" + n + "` (BPF)"
	}
	return "`" + sym + "`"
}

// parentRegex is perf report's --parent pattern for syms.
func parentRegex(syms []string) string {
	var alt []string
	for _, s := range syms {
		if n, ok := strings.CutPrefix(s, "bpf_prog:"); ok {
			alt = append(alt, "bpf_prog_[0-9a-f]+_"+regexp.QuoteMeta(n))
		} else {
			alt = append(alt, regexp.QuoteMeta(s))
		}
	}
	return "^(" + strings.Join(alt, "|") + ")$"
}

var (
	xdpOwn = []string{"do_xdp_generic"}
	natOwn = []string{"do_xdp_generic", bpfSym("tc_front"), "skb_do_redirect"}
	nftOwn = []string{"ip_rcv", "ip_rcv_finish", "ip_forward", "ip_forward_finish", "ip_output",
		"ip_finish_output", "__ip_finish_output", "ip_finish_output2"}
)

// breakdown lists functions whose inclusive time the report shows apart,
// inside the director's own cost.
var breakdown = []struct{ sym, what string }{
	{"pskb_expand_head", "generic XDP's copy into 256 bytes of headroom"},
	{"__pskb_pull_tail", "generic XDP's linearizing of trafgen's paged skb, which frees its page (the nft paths free it at the sink, outside their own cost)"},
	{bpfSym("xdp_front"), "raftlb's XDP program: its fast path (established connections)"},
	{bpfSym("xdp_front_full"), "raftlb's XDP program: the rest, by tail call"},
	{bpfSym("pps_bounce"), "the bounce program"},
	{"generic_xdp_tx", "XDP_TX to the veth"},
	{bpfSym("tc_front"), "raftlb's TC program"},
	{"skb_do_redirect", "the NAT redirect (route lookup, neighbour, transmit)"},
	{"ip_rcv", "the part of the nft director's time under an ip_rcv frame; the tail calls take the rest out of it"},
	{"nf_conntrack_in", "conntrack"},
	{"nft_do_chain", "nftables rules"},
}

// A profile is what perf report says about one recording.
type profile struct {
	samples string             // perf's own rounding, e.g. "20K"
	cpuNS   float64            // event count: CPU time sampled, ns
	incl    map[string]float64 // inclusive share of cpuNS by function within the own samples, percent
	own     float64            // share of cpuNS in samples with an own function on their chain, percent
}

var (
	childrenLine = regexp.MustCompile(`^\s*([\d.]+)%\s+([\d.]+)%\s+\[[^\]]*\]\s+(\S+)`)
	parentLine   = regexp.MustCompile(`^\s*([\d.]+)%\s+(\S+)\s*$`)
	bpfProg      = regexp.MustCompile(`^bpf_prog_[0-9a-f]+_(\w+)$`)
)

// A report is one perf report --stdio output: its header and its lines'
// shares by symbol (BPF programs as bpfSym, summed over tags).
type report struct {
	samples string
	cpuNS   float64
	share   map[string]float64
}

// parseReport reads perf report --stdio -g none output, sorted by sym
// with --children (two percentages) or by parent (one).
func parseReport(r io.Reader) (report, error) {
	p := report{share: map[string]float64{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "# Samples: "); ok {
			p.samples, _, _ = strings.Cut(v, " ")
			continue
		}
		if v, ok := strings.CutPrefix(line, "# Event count (approx.): "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return report{}, fmt.Errorf("parse event count %q: %w", v, err)
			}
			p.cpuNS = n
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		m := childrenLine.FindStringSubmatch(line)
		if m != nil {
			m = []string{m[0], m[1], m[3]}
		} else if m = parentLine.FindStringSubmatch(line); m == nil {
			continue
		}
		share, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return report{}, fmt.Errorf("parse share in %q: %w", line, err)
		}
		sym := m[2]
		if b := bpfProg.FindStringSubmatch(sym); b != nil {
			sym = bpfSym(b[1])
		}
		p.share[sym] += share
	}
	if err := sc.Err(); err != nil {
		return report{}, fmt.Errorf("read perf report: %w", err)
	}
	if p.cpuNS == 0 {
		return report{}, errors.New("perf report has no samples")
	}
	return p, nil
}

// A perfRun is one profiled run of a path and mix.
type perfRun struct {
	w    window
	prof profile
}

// perPacket converts a share of the sampled time into ns per packet.
func (r perfRun) perPacket(share float64) float64 {
	return share / 100 * r.prof.cpuNS / float64(r.w.packets)
}

// ns is sym's inclusive time per packet counted, within the own samples.
func (r perfRun) ns(sym string) float64 { return r.perPacket(r.prof.incl[sym]) }

// own is the director's own time per packet.
func (r perfRun) own() float64 { return r.perPacket(r.prof.own) }

// profiles[path][mix] holds the profiled runs, one per round.
type profiles map[string]map[string][]perfRun

func (p profiles) add(path, mix string, r perfRun) {
	if p[path] == nil {
		p[path] = make(map[string][]perfRun)
	}
	p[path][mix] = append(p[path][mix], r)
}

// profileAll runs every selected path but direct with every selected mix
// under perf, in random order, o.perfRuns rounds.
func (b *bench) profileAll(ctx context.Context) (profiles, error) {
	dir := b.o.perfDir
	if dir == "" {
		dir = filepath.Join(b.dir, "perf")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create perf dir: %w", err)
	}
	out := make(profiles)
	for round := range b.o.perfRuns {
		type trial struct {
			p path
			m mix
		}
		var ts []trial
		for _, p := range b.paths {
			if len(p.own) == 0 {
				continue
			}
			for _, m := range b.mixes {
				ts = append(ts, trial{p, m})
			}
		}
		rand.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
		for _, t := range ts {
			data := filepath.Join(dir, fmt.Sprintf("%s-%s-%d.data", t.p.name, t.m.name, round))
			w, err := b.trial(ctx, t.p, t.m, data)
			if err != nil {
				return nil, fmt.Errorf("profile %s %s: %w", t.p.name, t.m.name, err)
			}
			prof, err := perfReport(ctx, data, t.p.own)
			if err != nil {
				return nil, fmt.Errorf("profile %s %s: %w", t.p.name, t.m.name, err)
			}
			if b.o.perfDir == "" {
				os.Remove(data)
			}
			r := perfRun{w, prof}
			out.add(t.p.name, t.m.name, r)
			fmt.Fprintf(os.Stderr, "pps: perf %s %s: %.0fk pps, own %.0f ns/packet\n", t.p.name, t.m.name, w.pps()/1e3, r.own())
		}
	}
	return out, nil
}

// perfReport runs perf report on data twice (samples by the innermost
// function of own on their chain; inclusive time by function within those
// samples), keeps the text next to it and parses it.
func perfReport(ctx context.Context, data string, own []string) (profile, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	run := func(args ...string) (report, error) {
		var stderr strings.Builder
		cmd := exec.CommandContext(ctx, "perf", append([]string{"report", "-i", data, "--stdio", "-g", "none"}, args...)...)
		cmd.Stderr = &stderr
		text, err := cmd.Output()
		if err != nil {
			return report{}, fmt.Errorf("perf report: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		f, err := os.OpenFile(strings.TrimSuffix(data, ".data")+".txt", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return report{}, fmt.Errorf("keep perf report: %w", err)
		}
		fmt.Fprintf(f, "# perf report %s\n%s\n", strings.Join(args, " "), text)
		if err := f.Close(); err != nil {
			return report{}, fmt.Errorf("keep perf report: %w", err)
		}
		return parseReport(strings.NewReader(string(text)))
	}
	parents, err := run("--no-children", "--sort", "parent", "--parent", parentRegex(own))
	if err != nil {
		return profile{}, err
	}
	// -x: only the director's samples, so a function's inclusive time is
	// what it takes there (__pskb_pull_tail, say, also runs at the bridge).
	incl, err := run("--children", "--sort", "sym", "--parent", parentRegex(own), "-x")
	if err != nil {
		return profile{}, err
	}
	p := profile{samples: incl.samples, cpuNS: incl.cpuNS, incl: incl.share}
	for sym, share := range parents.share {
		if sym != "[other]" {
			p.own += share
		}
	}
	return p, nil
}

// A recorder is perf record on every CPU, started with its events off and
// switched through its control pipe (perf record --control), so the
// recording covers the counted window and nothing else.
type recorder struct {
	cmd      *exec.Cmd
	cancel   context.CancelFunc
	ctl, ack *os.File
	waited   chan error
	stderr   strings.Builder
}

// startRecorder starts perf record into data and waits until it listens.
// It is killed if it runs perfSlack longer than bound.
func startRecorder(ctx context.Context, data string, bound time.Duration) (*recorder, error) {
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create perf control pipe: %w", err)
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		return nil, fmt.Errorf("create perf ack pipe: %w", err)
	}
	r := &recorder{ctl: ctlW, ack: ackR, waited: make(chan error, 1)}
	// No workload: perf would pass on its end by signal (a workload it
	// stops dies of SIGTERM, and so then does perf). The context bounds it.
	ctx, r.cancel = context.WithTimeout(ctx, bound+perfSlack)
	r.cmd = exec.CommandContext(ctx, "perf", "record", "-q", "-e", "cpu-clock", "-F", fmt.Sprint(perfFreq), "-a", "-g",
		"--no-buildid", "-D", "-1", "--control", "fd:3,4", "-o", data)
	r.cmd.ExtraFiles = []*os.File{ctlR, ackW} // fds 3 and 4
	r.cmd.Stdout, r.cmd.Stderr = &r.stderr, &r.stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r.cmd.Cancel = func() error { return syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) }
	r.cmd.WaitDelay = 5 * time.Second
	err = r.cmd.Start()
	ctlR.Close()
	ackW.Close()
	if err != nil {
		r.cancel()
		ctlW.Close()
		ackR.Close()
		return nil, fmt.Errorf("start perf record: %w", err)
	}
	go func() { r.waited <- r.cmd.Wait() }()
	if err := r.command("ping", 30*time.Second); err != nil {
		r.kill()
		r.cancel()
		ctlW.Close()
		ackR.Close()
		return nil, err
	}
	return r, nil
}

// command sends perf a control command and waits for its ack.
func (r *recorder) command(c string, timeout time.Duration) error {
	if _, err := io.WriteString(r.ctl, c+"\n"); err != nil {
		return fmt.Errorf("send perf %s: %w: %s", c, err, r.exited())
	}
	if err := r.ack.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("set perf ack deadline: %w", err)
	}
	buf := make([]byte, 16)
	n, err := r.ack.Read(buf)
	if err != nil {
		return fmt.Errorf("wait for perf to ack %s: %w: %s", c, err, r.exited())
	}
	// perf writes "ack\n" and its terminating NUL.
	if got := strings.Trim(string(buf[:n]), "\x00\n "); got != "ack" {
		return fmt.Errorf("perf answered %s with %q", c, got)
	}
	return nil
}

// exited describes perf's state for an error: its exit and its output if
// it is gone.
func (r *recorder) exited() string {
	select {
	case err := <-r.waited:
		r.waited <- err
		return fmt.Sprintf("perf record exited (%s): %s", errString(err), strings.TrimSpace(r.stderr.String()))
	case <-time.After(100 * time.Millisecond):
		return "perf record still running"
	}
}

func (r *recorder) enable() error  { return r.command("enable", 10*time.Second) }
func (r *recorder) disable() error { return r.command("disable", 10*time.Second) }

// finish tells perf to stop and waits for it to write its data.
func (r *recorder) finish() error {
	defer r.cancel()
	defer r.ctl.Close()
	defer r.ack.Close()
	if err := r.command("stop", 10*time.Second); err != nil {
		r.kill()
		return err
	}
	select {
	case err := <-r.waited:
		if err != nil {
			return fmt.Errorf("perf record: %s: %s", errString(err), strings.TrimSpace(r.stderr.String()))
		}
		return nil
	case <-time.After(perfSlack):
		r.kill()
		return errors.New("perf record did not finish writing in time")
	}
}

// kill ends perf and its workload and reaps them.
func (r *recorder) kill() {
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	err := <-r.waited
	r.waited <- err
}
