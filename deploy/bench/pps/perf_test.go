package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// A trimmed perf report --children --sort sym --stdio -g none.
const report = `# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 14K of event 'cpu-clock'
# Event count (approx.): 3000000000
#
# Children      Self  Symbol
# ........  ........  .............................................
#
    96.86%     0.09%  [k] do_syscall_64
    47.01%     0.00%  [.] 0x0000000000496661
     6.40%     0.31%  [k] do_xdp_generic
     4.73%     0.58%  [k] skb_do_redirect
     3.92%     0.56%  [k] bpf_prog_ef3e3e0a60806409_xdp_front
     2.15%     0.98%  [k] bpf_prog_47ccede8278cd02b_tc_front
     0.05%     0.05%  [k] bpf_prog_0123456789abcdef_tc_front
     0.85%     0.25%  [k] pskb_expand_head


#
# (Cannot load tips.txt file, please install perf!)
#
`

func TestParseReport(t *testing.T) {
	got, err := parseReport(strings.NewReader(report))
	if err != nil {
		t.Fatal(err)
	}
	want := profile{
		samples: "14K",
		cpuNS:   3e9,
		incl: map[string]float64{
			"do_syscall_64":      96.86,
			"0x0000000000496661": 47.01,
			"do_xdp_generic":     6.40,
			"skb_do_redirect":    4.73,
			bpfSym("xdp_front"):  3.92,
			bpfSym("tc_front"):   2.20, // two programs of that name, summed
			"pskb_expand_head":   0.85,
		},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(profile{}), cmp.Comparer(func(a, b float64) bool {
		return a-b < 1e-9 && b-a < 1e-9
	})); diff != "" {
		t.Errorf("parseReport (-want +got):\n%s", diff)
	}
}

func TestParseReportEmpty(t *testing.T) {
	if _, err := parseReport(strings.NewReader("# Samples: 0 of event 'cpu-clock'\n")); err == nil {
		t.Error("parseReport of a report without samples: no error")
	}
}

func TestPerfRunOwn(t *testing.T) {
	p, err := parseReport(strings.NewReader(report))
	if err != nil {
		t.Fatal(err)
	}
	// 3 s of CPU sampled while 100k packets were counted: 30 µs a packet.
	r := perfRun{window{packets: 100_000, dur: time.Second}, p}
	for _, tc := range []struct {
		syms []string
		want float64
	}{
		{xdpOwn, 1920},              // 6.40% of 30 µs
		{natOwn, 1920 + 660 + 1419}, // + tc_front 2.20%, skb_do_redirect 4.73%
		{nftOwn, 0},
	} {
		if got := r.own(tc.syms); got < tc.want-0.5 || got > tc.want+0.5 {
			t.Errorf("own(%v) = %.1f ns, want %.0f", tc.syms, got, tc.want)
		}
	}
}
