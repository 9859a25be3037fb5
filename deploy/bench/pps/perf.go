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
// call graphs, while a run is counted; a path's own cost per packet is the
// inclusive time of the kernel functions (and BPF programs) that run only
// at the director on that path, divided by the packets the realservers
// counted meanwhile. Unlike the ns/packet minus `direct`, it leaves out
// the second bridge crossing and the veth pair into the director, which
// every path pays.
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
//   - nftables: ip_rcv (prerouting with conntrack and DNAT, forwarding,
//     output, the transmit to the inside veth). Nothing else in the lab
//     reaches the IP layer: the sink drops at tcx ingress, before it.
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

var (
	xdpOwn = []string{"do_xdp_generic"}
	natOwn = []string{"do_xdp_generic", bpfSym("tc_front"), "skb_do_redirect"}
	nftOwn = []string{"ip_rcv"}
)

// breakdown lists functions reported on their own, inside the director's
// own cost.
var breakdown = []struct{ sym, what string }{
	{"pskb_expand_head", "generic XDP's copy"},
	{bpfSym("xdp_front"), "raftlb's XDP program"},
	{bpfSym("pps_bounce"), "the bounce program"},
	{"generic_xdp_tx", "XDP_TX to the veth"},
	{bpfSym("tc_front"), "raftlb's TC program"},
	{"skb_do_redirect", "the NAT redirect"},
	{"nf_conntrack_in", "conntrack"},
	{"nft_do_chain", "nftables rules"},
	{"ip_forward", "forwarding and output"},
}

// A profile is perf report's inclusive shares for one recording.
type profile struct {
	samples string             // perf's own rounding, e.g. "20K"
	cpuNS   float64            // event count: CPU time sampled, ns
	incl    map[string]float64 // inclusive share of cpuNS, percent
}

var (
	reportLine = regexp.MustCompile(`^\s*([\d.]+)%\s+([\d.]+)%\s+\[[^\]]*\]\s+(\S+)`)
	bpfProg    = regexp.MustCompile(`^bpf_prog_[0-9a-f]+_(\w+)$`)
)

// parseReport reads the output of perf report --children --sort sym
// --stdio -g none.
func parseReport(r io.Reader) (profile, error) {
	p := profile{incl: map[string]float64{}}
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
				return profile{}, fmt.Errorf("parse event count %q: %w", v, err)
			}
			p.cpuNS = n
			continue
		}
		m := reportLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		share, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return profile{}, fmt.Errorf("parse share in %q: %w", line, err)
		}
		sym := m[3]
		if b := bpfProg.FindStringSubmatch(sym); b != nil {
			sym = bpfSym(b[1])
		}
		p.incl[sym] += share
	}
	if err := sc.Err(); err != nil {
		return profile{}, fmt.Errorf("read perf report: %w", err)
	}
	if p.cpuNS == 0 || len(p.incl) == 0 {
		return profile{}, errors.New("perf report has no samples")
	}
	return p, nil
}

// A perfRun is one profiled run of a path and mix.
type perfRun struct {
	w    window
	prof profile
}

// ns is sym's inclusive time per packet counted.
func (r perfRun) ns(sym string) float64 {
	return r.prof.incl[sym] / 100 * r.prof.cpuNS / float64(r.w.packets)
}

// own is the summed inclusive time per packet of syms, which must not
// nest in one another.
func (r perfRun) own(syms []string) float64 {
	var t float64
	for _, s := range syms {
		t += r.ns(s)
	}
	return t
}

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
			prof, err := perfReport(ctx, data)
			if err != nil {
				return nil, fmt.Errorf("profile %s %s: %w", t.p.name, t.m.name, err)
			}
			if b.o.perfDir == "" {
				os.Remove(data)
			}
			r := perfRun{w, prof}
			out.add(t.p.name, t.m.name, r)
			fmt.Fprintf(os.Stderr, "pps: perf %s %s: %.0fk pps, own %.0f ns/packet\n", t.p.name, t.m.name, w.pps()/1e3, r.own(t.p.own))
		}
	}
	return out, nil
}

// perfReport runs perf report on data, keeps its text next to it and
// parses it.
func perfReport(ctx context.Context, data string) (profile, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "perf", "report", "-i", data, "--children", "--sort", "sym", "--stdio", "-g", "none")
	cmd.Stderr = &stderr
	text, err := cmd.Output()
	if err != nil {
		return profile{}, fmt.Errorf("perf report: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := os.WriteFile(strings.TrimSuffix(data, ".data")+".txt", text, 0o644); err != nil {
		return profile{}, fmt.Errorf("keep perf report: %w", err)
	}
	return parseReport(strings.NewReader(string(text)))
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
