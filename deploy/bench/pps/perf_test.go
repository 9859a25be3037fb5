package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Trimmed outputs of perf report --stdio -g none.
const (
	childrenReport = `# To display the perf.data header info, please use --header/--header-only options.
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
	parentReport = `# Total Lost Samples: 0
#
# Samples: 14K of event 'cpu-clock'
# Event count (approx.): 2993798640
#
# Overhead  Parent symbol     
# ........  ..................
#
    85.45%  [other]           
    10.04%  ip_rcv            
     2.49%  ip_finish_output2 
     1.20%  ip_output         
`
)

var approx = cmpopts.EquateApprox(0, 1e-9)

func TestParseReport(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       report
	}{
		{"children", childrenReport, report{
			samples: "14K",
			cpuNS:   3e9,
			share: map[string]float64{
				"do_syscall_64":      96.86,
				"0x0000000000496661": 47.01,
				"do_xdp_generic":     6.40,
				"skb_do_redirect":    4.73,
				bpfSym("xdp_front"):  3.92,
				bpfSym("tc_front"):   2.20, // two programs of that name, summed
				"pskb_expand_head":   0.85,
			},
		}},
		{"parent", parentReport, report{
			samples: "14K",
			cpuNS:   2993798640,
			share: map[string]float64{
				"[other]":           85.45,
				"ip_rcv":            10.04,
				"ip_finish_output2": 2.49,
				"ip_output":         1.20,
			},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseReport(strings.NewReader(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(report{}), approx); diff != "" {
				t.Errorf("parseReport (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseReportEmpty(t *testing.T) {
	if _, err := parseReport(strings.NewReader("# Samples: 0 of event 'cpu-clock'\n")); err == nil {
		t.Error("parseReport of a report without samples: no error")
	}
}

func TestParentRegex(t *testing.T) {
	re := regexp.MustCompile(parentRegex(natOwn)) // Go's syntax agrees with POSIX ERE here
	for sym, want := range map[string]bool{
		"do_xdp_generic":                      true,
		"skb_do_redirect":                     true,
		"bpf_prog_47ccede8278cd02b_tc_front":  true,
		"bpf_prog_47ccede8278cd02b_xdp_front": false,
		"bpf_prog_47ccede8278cd02b_tc_front2": false,
		"do_xdp_generic.cold":                 false,
		"skb_do_redirect_x":                   false,
	} {
		if got := re.MatchString(sym); got != want {
			t.Errorf("parentRegex(natOwn) matches %s: %v, want %v", sym, got, want)
		}
	}
}

func TestPerfRunPerPacket(t *testing.T) {
	// 3 s of CPU sampled while 100k packets were counted: 30 µs a packet.
	r := perfRun{window{packets: 100_000, dur: time.Second}, profile{
		cpuNS: 3e9,
		incl:  map[string]float64{"do_xdp_generic": 6.4},
		own:   14.55,
	}}
	if diff := cmp.Diff(1920.0, r.ns("do_xdp_generic"), approx); diff != "" {
		t.Errorf("ns(do_xdp_generic) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(4365.0, r.own(), approx); diff != "" {
		t.Errorf("own() (-want +got):\n%s", diff)
	}
	if got := r.ns("ip_rcv"); got != 0 {
		t.Errorf("ns of a function without samples = %v, want 0", got)
	}
}
