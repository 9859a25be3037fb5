package dataplane

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/raftlb/raftlb/dataplane/maglev"
)

// maxLCCandidates mirrors MAX_LC_CANDIDATES in bpf/lb.h.
const maxLCCandidates = 128

type candidate struct {
	idx    uint32
	id     string // address:port, the identity every director agrees on
	weight uint32
}

// buildTable computes a service's lookup table of realserver indexes from
// its eligible realservers. Its meaning depends on the scheduler: a
// Maglev ring (mh, sh), a weighted sequence (rr, wrr) or the candidate
// list (lc, wlc).
func buildTable(s Scheduler, cands []candidate, size int) ([]uint32, error) {
	if len(cands) == 0 {
		return nil, nil
	}
	slices.SortFunc(cands, func(a, b candidate) int { return cmp.Compare(a.id, b.id) })
	switch s {
	case MH, SH:
		bs := make([]maglev.Backend, len(cands))
		for i, c := range cands {
			bs[i] = maglev.Backend{ID: c.id, Weight: c.weight}
		}
		t, err := maglev.Table(bs, size)
		if err != nil {
			return nil, fmt.Errorf("build maglev table: %w", err)
		}
		out := make([]uint32, len(t))
		for i, b := range t {
			out[i] = cands[b].idx
		}
		return out, nil
	case RR:
		out := make([]uint32, len(cands))
		for i, c := range cands {
			out[i] = c.idx
		}
		return out, nil
	case WRR:
		return wrrSequence(cands, size), nil
	case LC, WLC:
		if len(cands) > maxLCCandidates {
			return nil, fmt.Errorf("build %s candidates: %d realservers, at most %d: %w", s, len(cands), maxLCCandidates, ErrInvalid)
		}
		out := make([]uint32, len(cands))
		for i, c := range cands {
			out[i] = c.idx
		}
		return out, nil
	}
	return nil, fmt.Errorf("build table: scheduler %s: %w", s, ErrInvalid)
}

// wrrSequence interleaves realservers by weight (nginx's smooth weighted
// round robin): one period of sum(weights)/gcd picks, truncated to the
// table size when longer.
func wrrSequence(cands []candidate, size int) []uint32 {
	g := uint64(0)
	for _, c := range cands {
		g = gcd(g, uint64(c.weight))
	}
	var total uint64
	for _, c := range cands {
		total += uint64(c.weight) / g
	}
	n := int(min(total, uint64(size)))
	cur := make([]int64, len(cands))
	out := make([]uint32, 0, n)
	for len(out) < n {
		best := 0
		for i, c := range cands {
			cur[i] += int64(uint64(c.weight) / g)
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= int64(total)
		out = append(out, cands[best].idx)
	}
	return out
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
