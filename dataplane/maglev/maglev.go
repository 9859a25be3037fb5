// Package maglev computes weighted Maglev lookup tables (Eisenbud et al.,
// NSDI 2016). Every director computes its tables from the replicated
// state, so the computation is deterministic: the same backends, in any
// order, give a byte-identical table.
package maglev

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
)

// DefaultSize is the table size Maglev and Katran use: a prime well above
// 100 × the number of backends of a typical service.
const DefaultSize = 65537

// ErrSize reports a table size that is not a prime ≥ 3.
var ErrSize = errors.New("table size must be a prime >= 3")

// Backend is one entry to spread over the table.
type Backend struct {
	// ID identifies the backend across directors (e.g. "192.0.2.11:80");
	// its hash places the backend's permutation, so it must be stable.
	ID string
	// Weight is the relative share of table slots; 0 leaves the backend out.
	Weight uint32
}

// Table fills a table of the given prime size with indexes into backends.
// Backends get slots in proportion to their weights. With no weighted
// backend every slot is -1. Duplicate IDs are an error.
func Table(backends []Backend, size int) ([]int32, error) {
	if size < 3 || !IsPrime(size) {
		return nil, fmt.Errorf("build table of size %d: %w", size, ErrSize)
	}
	order := make([]int, 0, len(backends))
	for i, b := range backends {
		if b.Weight > 0 {
			order = append(order, i)
		}
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(backends[a].ID, backends[b].ID) })
	for i := 1; i < len(order); i++ {
		if backends[order[i]].ID == backends[order[i-1]].ID {
			return nil, fmt.Errorf("build table: duplicate backend %q", backends[order[i]].ID)
		}
	}

	table := make([]int32, size)
	for i := range table {
		table[i] = -1
	}
	if len(order) == 0 {
		return table, nil
	}

	m := uint64(size)
	type perm struct{ offset, skip, next, acc uint64 }
	perms := make([]perm, len(order))
	var maxW uint64
	for i, bi := range order {
		b := backends[bi]
		perms[i] = perm{offset: hash(b.ID, 0) % m, skip: hash(b.ID, 1)%(m-1) + 1}
		maxW = max(maxW, uint64(b.Weight))
	}

	// Each round a backend earns its weight; it claims its next preferred
	// free slot for every maxW it has earned, so the heaviest backend
	// claims one slot per round and the others proportionally fewer.
	filled := uint64(0)
	for filled < m {
		for i, bi := range order {
			p := &perms[i]
			p.acc += uint64(backends[bi].Weight)
			for p.acc >= maxW && filled < m {
				p.acc -= maxW
				c := (p.offset + p.next*p.skip) % m
				for table[c] >= 0 {
					p.next++
					c = (p.offset + p.next*p.skip) % m
				}
				table[c] = int32(bi)
				p.next++
				filled++
			}
		}
	}
	return table, nil
}

func hash(id string, seed byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte{seed})
	h.Write([]byte(id))
	return h.Sum64()
}

// IsPrime reports whether n is prime.
func IsPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
