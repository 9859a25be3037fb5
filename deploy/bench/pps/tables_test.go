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
		created float64
	}{
		{"raftlb full", tableFill{raftlb(349528, 1000), raftlb(349528, 401000), 400000}, true, 0},
		{"raftlb past its capacity, still filling", tableFill{raftlb(300000, 0), raftlb(349528, 300000), 400000}, false, 49528.0 / 400000},
		{"raftlb near full, growing slowly", tableFill{raftlb(346400, 0), raftlb(349000, 0), 400000}, true, 2600.0 / 400000},
		{"conntrack at its max", tableFill{conntrack(262144, 5), conntrack(262143, 200005), 200000}, true, 199999.0 / 200000},
		{"conntrack filling", tableFill{conntrack(60000, 0), conntrack(260000, 0), 200000}, false, 1},
		{"nothing counted", tableFill{conntrack(0, 0), conntrack(0, 0), 0}, false, 0},
	} {
		if got := tc.f.full(); got != tc.full {
			t.Errorf("%s: full() = %v, want %v", tc.name, got, tc.full)
		}
		if diff := cmp.Diff(tc.created, tc.f.created(), approx); diff != "" {
			t.Errorf("%s: created() (-want +got):\n%s", tc.name, diff)
		}
	}
}
