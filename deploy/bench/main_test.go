package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/raftlb/raftlb/server
cpu: Some CPU @ 2.00GHz
BenchmarkReplicatedWrites-8   	     100	   1000000 ns/op	      1000 writes/s	    2048 B/op	      10 allocs/op
BenchmarkReplicatedWrites-8   	     100	   3000000 ns/op	       333.3 writes/s	    2048 B/op	      10 allocs/op
BenchmarkReplicatedWrites-8   	     100	   2000000 ns/op	       500 writes/s	    2048 B/op	      10 allocs/op
BenchmarkReplicatedWrites-8 log line from the benchmark
PASS
ok  	github.com/raftlb/raftlb/server	5.1s
`

func TestRender(t *testing.T) {
	var r results
	if err := r.parse(strings.NewReader(sample)); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if err := r.render(&sb, time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	want := "| ReplicatedWrites | 3 | 2000000 (−50.0% +50.0%) | 500 (−33.3% +100.0%) | 2048 (−0.0% +0.0%) | 10 (−0.0% +0.0%) |\n"
	got := sb.String()
	if !strings.Contains(got, want) {
		t.Errorf("row missing:\n%s\nin:\n%s", want, got)
	}
	for _, s := range []string{"## github.com/raftlb/raftlb/server", "| benchmark | runs | ns/op | writes/s | B/op | allocs/op |", "- cpu: Some CPU @ 2.00GHz"} {
		if !strings.Contains(got, s) {
			t.Errorf("missing %q in:\n%s", s, got)
		}
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		in          []float64
		med, lo, hi float64
	}{
		{[]float64{3}, 3, 3, 3},
		{[]float64{4, 1, 2, 3}, 2.5, 1, 4},
		{[]float64{5, 1, 9}, 5, 1, 9},
	} {
		m, lo, hi := summary(tc.in)
		if diff := cmp.Diff([]float64{tc.med, tc.lo, tc.hi}, []float64{m, lo, hi}); diff != "" {
			t.Errorf("summary(%v) (-want +got):\n%s", tc.in, diff)
		}
	}
}
