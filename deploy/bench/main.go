// Command bench turns the text output of `go test -bench` (several -count runs) into
// BENCHMARKS.md: per benchmark the median of every metric and its spread, never a single
// run's number. `make bench` runs it; later lab measurements add their own sections.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	out := flag.String("o", "BENCHMARKS.md", "file to write")
	flag.Parse()
	var res results
	for _, path := range flag.Args() {
		if err := res.parseFile(path); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	f, err := os.Create(*out)
	if err == nil {
		err = res.render(f, time.Now().UTC())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// results are the parsed runs, in the order benchmarks first appeared.
type results struct {
	env     []string // "goos: linux", "cpu: ...", as go test prints them, deduplicated
	benches []*bench
}

// bench is one benchmark of one package across runs.
type bench struct {
	pkg, name string
	units     []string // in first-seen order
	values    map[string][]float64
	runs      int
}

func (r *results) parseFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open results: %w", err)
	}
	defer f.Close()
	if err := r.parse(f); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}

// parse reads go test -bench output; lines it does not know are skipped.
func (r *results) parse(in io.Reader) error {
	pkg := ""
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimPrefix(line, "pkg: ")
		case strings.HasPrefix(line, "goos: "), strings.HasPrefix(line, "goarch: "), strings.HasPrefix(line, "cpu: "):
			if !slices.Contains(r.env, line) {
				r.env = append(r.env, line)
			}
		case strings.HasPrefix(line, "Benchmark"):
			r.addLine(pkg, line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	return nil
}

// addLine records "BenchmarkName-8  N  v1 unit1  v2 unit2 ..."; other Benchmark-prefixed
// lines (a benchmark's log output) are ignored.
func (r *results) addLine(pkg, line string) {
	f := strings.Fields(line)
	if len(f) < 4 || len(f)%2 != 0 {
		return
	}
	if _, err := strconv.Atoi(f[1]); err != nil {
		return
	}
	name := strings.TrimPrefix(f[0], "Benchmark")
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			name = name[:i] // the GOMAXPROCS suffix
		}
	}
	var b *bench
	for _, x := range r.benches {
		if x.pkg == pkg && x.name == name {
			b = x
		}
	}
	if b == nil {
		b = &bench{pkg: pkg, name: name, values: map[string][]float64{}}
		r.benches = append(r.benches, b)
	}
	b.runs++
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			continue
		}
		unit := f[i+1]
		if _, ok := b.values[unit]; !ok {
			b.units = append(b.units, unit)
		}
		b.values[unit] = append(b.values[unit], v)
	}
}

// summary is the median of vs and the spread as min and max.
func summary(vs []float64) (median, lo, hi float64) {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		median = s[n/2]
	} else {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

// cell prints a median with its spread in percent of the median.
func cell(vs []float64) string {
	if len(vs) == 0 {
		return "-"
	}
	m, lo, hi := summary(vs)
	s := number(m)
	if len(vs) > 1 && m != 0 {
		s += fmt.Sprintf(" (−%.1f%% +%.1f%%)", 100*(m-lo)/m, 100*(hi-m)/m)
	}
	return s
}

// number prints v with about four significant digits and never in exponent form.
func number(v float64) string {
	if math.Abs(v) >= 1000 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// notes say what a package's numbers mean, below its table.
var notes = map[string]string{
	"github.com/raftlb/raftlb/server": `ReplicatedWrites: 32 concurrent clients over all three directors. Each Raft batch is one
fsync of the BoltDB log plus a TLS round trip; more concurrent clients mean bigger batches.`,
	"github.com/raftlb/raftlb/dataplane": `ns/pkt is the kernel's own BPF_PROG_TEST_RUN timing. Paths that leave the packet as they
found it (` + "`empty`, `dr/established`, `not-vip/pass`" + `) repeat in the kernel: subtract
` + "`empty`" + ` (the harness's cost per repetition) for the program's own. The others run once per call
minus an empty program run the same way (` + "`dr/established-once`" + ` is the DR hit measured so, for
comparison). ` + "`XDP/*/established*`" + ` and ` + "`XDP/nat/xdp-pass`" + ` take the front program's fast
path (` + "`xdp_front`" + `); the other XDP rows go on by tail call to ` + "`xdp_front_full`" + `. ` + "`*/new`" + ` is a SYN
of a tuple never seen (scheduling, the connection insert, its event), against a 262,144-entry table
whose buckets are not in the cache. ` + "`Memory/random-read`" + ` is one read at a random place in a BPF
array as big as that table, run the same way: the cost of the cache and TLB misses any insert into
it pays, whatever the table's design. Targets: established DR ≤ 40 ns, a new connection ≤ 120 ns.`,
	"github.com/raftlb/raftlb/deploy/e2e": `AgentConvergence: from the CLI's return to the realserver's kernel configured by its agent
(add: VIP on lo, sysctls, routes; del: removal), 20 trials per run.`,
	"github.com/raftlb/raftlb/deploy/e2e/failover": `FailoverOutage: the longest gap in a probe every 10 ms through a VIP when its owner is SIGKILLed
(owner-and-leader: the owner is also the Raft leader, so a new leader must first wait out a lease).
ConnectionSurvival: connections replicated before the kill (old) and younger than one sync batch
(young) that still reach their realserver on the new owner, by scheduler. ConnSyncLab: 64 dialers in
the client namespace open and hold real TCP connections through a DR (mh) VIP owned by d1 for 5 s;
then the standby d2's table is polled through the API until it holds ≥ 99% of them. conns/s is bounded
by the machine (client, three backends and both directors share 2 CPUs); standby-lag is an upper
bound, as one poll of the whole table takes ~280 ms.`,
}

func (r *results) render(w io.Writer, now time.Time) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, "# Benchmarks")
	fmt.Fprintln(bw)
	fmt.Fprintf(bw, "Written by `make bench` on %s. Each cell is the median over the runs, with the\n", now.Format("2006-01-02"))
	fmt.Fprintln(bw, "spread to the slowest and fastest run in percent of the median. Absolute numbers depend")
	fmt.Fprintln(bw, "on the machine; compare ratios measured in the same run.")
	if len(r.env) > 0 {
		fmt.Fprintln(bw)
		for _, e := range r.env {
			fmt.Fprintf(bw, "- %s\n", e)
		}
	}
	if len(r.benches) == 0 {
		fmt.Fprintln(bw)
		fmt.Fprintln(bw, "No benchmark results.")
	}
	var pkgs []string
	for _, b := range r.benches {
		if !slices.Contains(pkgs, b.pkg) {
			pkgs = append(pkgs, b.pkg)
		}
	}
	for _, pkg := range pkgs {
		var units []string
		for _, b := range r.benches {
			if b.pkg != pkg {
				continue
			}
			for _, u := range b.units {
				if !slices.Contains(units, u) {
					units = append(units, u)
				}
			}
		}
		fmt.Fprintf(bw, "\n## %s\n\n", pkg)
		fmt.Fprintf(bw, "| benchmark | runs | %s |\n", strings.Join(units, " | "))
		fmt.Fprintf(bw, "| --- | ---: |%s\n", strings.Repeat(" ---: |", len(units)))
		for _, b := range r.benches {
			if b.pkg != pkg {
				continue
			}
			cells := make([]string, len(units))
			for i, u := range units {
				cells[i] = cell(b.values[u])
			}
			fmt.Fprintf(bw, "| %s | %d | %s |\n", b.name, b.runs, strings.Join(cells, " | "))
		}
		if n, ok := notes[pkg]; ok {
			fmt.Fprintf(bw, "\n%s\n", n)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write benchmarks: %w", err)
	}
	return nil
}
