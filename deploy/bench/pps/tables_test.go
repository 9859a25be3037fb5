package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseConntrackStat(t *testing.T) {
	// /proc/net/stat/nf_conntrack of a two-CPU machine, trimmed.
	const text = `entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00040000  00000000 00000003 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0002d5a0 00000000  00000000 00000000 00000000 00000000
00040000  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000010 00000000  00000000 00000000 00000000 00000000
`
	got, err := parseConntrackStat(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"entries": 0x80000, "found": 3, "drop": 2, "early_drop": 0x2d5b0}
	for k, v := range got {
		if v == 0 {
			delete(got, k)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseConntrackStat (-want +got):\n%s", diff)
	}
}

func TestParseConntrackStatBad(t *testing.T) {
	for name, text := range map[string]string{
		"empty":        "",
		"short row":    "entries drop\n00000001\n",
		"not hex":      "entries drop\n00000001 0000000g\n",
		"extra column": "entries drop\n00000001 00000000 00000000\n",
	} {
		if _, err := parseConntrackStat(strings.NewReader(text)); err == nil {
			t.Errorf("parseConntrackStat(%s): no error", name)
		}
	}
}

func TestTableFill(t *testing.T) {
	raftlb := func(entries int, refused uint64) tableSnap {
		return tableSnap{entries: entries, capacity: 262144, slots: 349528, refused: refused}
	}
	conntrack := func(entries int, evicted uint64) tableSnap {
		return tableSnap{entries: entries, capacity: 262144, evicted: evicted}
	}
	for _, tc := range []struct {
		name    string
		f       tableFill
		full    bool
		atLimit bool
		created float64
	}{
		{"raftlb full", tableFill{raftlb(349528, 1000), raftlb(349528, 401000), 400000}, true, true, 0},
		{"raftlb past its capacity, still filling", tableFill{raftlb(300000, 0), raftlb(349528, 300000), 400000}, false, true, 49528.0 / 400000},
		{"raftlb near full, growing slowly", tableFill{raftlb(346400, 0), raftlb(349000, 0), 400000}, true, true, 2600.0 / 400000},
		{"raftlb past its capacity, short of its limit", tableFill{raftlb(200000, 0), raftlb(340000, 0), 140000}, false, false, 1},
		{"conntrack at its max", tableFill{conntrack(262144, 5), conntrack(262143, 200005), 200000}, true, true, 199999.0 / 200000},
		{"conntrack filling", tableFill{conntrack(60000, 0), conntrack(250000, 0), 190000}, false, false, 1},
		{"conntrack reaching its max in the window", tableFill{conntrack(60000, 0), conntrack(260000, 0), 200000}, false, true, 1},
		{"nothing counted", tableFill{conntrack(0, 0), conntrack(0, 0), 0}, false, false, 0},
	} {
		if got := tc.f.full(); got != tc.full {
			t.Errorf("%s: full() = %v, want %v", tc.name, got, tc.full)
		}
		if got := tc.f.atLimit(); got != tc.atLimit {
			t.Errorf("%s: atLimit() = %v, want %v", tc.name, got, tc.atLimit)
		}
		if diff := cmp.Diff(tc.created, tc.f.created(), approx); diff != "" {
			t.Errorf("%s: created() (-want +got):\n%s", tc.name, diff)
		}
	}
}

// The per-packet shares of a NAT director whose tables are full: each
// new flow is refused a connection entry and a reverse entry, but for
// the packets whose tuple is already in the tables.
func TestTableFillShares(t *testing.T) {
	nat := func(refused, rnat uint64) tableSnap {
		return tableSnap{entries: 349528, capacity: 262144, slots: 349528, refused: refused, nat: true, rnatRefused: rnat}
	}
	f := tableFill{nat(5000, 4000), nat(5000+388000, 4000+390000), 400000}
	for _, tc := range []struct {
		name string
		n    func(tableSnap) uint64
		want float64
	}{
		{"table full", func(s tableSnap) uint64 { return s.refused }, 0.97},
		{"reverse-NAT full", func(s tableSnap) uint64 { return s.rnatRefused }, 0.975},
	} {
		if diff := cmp.Diff(tc.want, f.share(tc.n), approx); diff != "" {
			t.Errorf("%s: share (-want +got):\n%s", tc.name, diff)
		}
	}
	if got := (tableFill{nat(0, 0), nat(10, 10), 0}).share(func(s tableSnap) uint64 { return s.rnatRefused }); got != 0 {
		t.Errorf("share with nothing counted = %v, want 0", got)
	}
}

func TestInRuns(t *testing.T) {
	conntrack := func(entries int) tableFill {
		return tableFill{end: tableSnap{entries: entries, capacity: 262144}, packets: 1}
	}
	below, at := conntrack(200000), conntrack(262144)
	for _, tc := range []struct {
		name  string
		fs    []tableFill
		want  string
		wantN int
	}{
		{"none", []tableFill{below, below}, "no", 0},
		{"some", []tableFill{below, at, at}, "in 2 of 3 runs", 2},
		{"all", []tableFill{at, at}, "yes", 2},
	} {
		got, n := inRuns(tc.fs, tableFill.atLimit)
		if got != tc.want || n != tc.wantN {
			t.Errorf("%s: inRuns = %q, %d; want %q, %d", tc.name, got, n, tc.want, tc.wantN)
		}
	}
}
