package maglev

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func digest(t *testing.T, table []int32, backends []Backend) [32]byte {
	t.Helper()
	h := sha256.New()
	for _, i := range table {
		id := "-"
		if i >= 0 {
			id = backends[i].ID
		}
		fmt.Fprintln(h, id)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func TestTableDeterministic(t *testing.T) {
	a := []Backend{{"192.0.2.11:80", 1}, {"192.0.2.12:80", 2}, {"192.0.2.13:80", 1}}
	b := []Backend{a[2], a[0], a[1]}
	ta, err := Table(a, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	ta2, err := Table(a, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := Table(b, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ta, ta2); diff != "" {
		t.Errorf("same input, different tables (-want +got):\n%s", diff)
	}
	// Different input order: same backend in every slot.
	if da, db := digest(t, ta, a), digest(t, tb, b); da != db {
		t.Errorf("input order changed the table: %x vs %x", da, db)
	}
	// Pin the bytes so a change to the algorithm is a deliberate one.
	buf := make([]byte, 4*len(ta))
	for i, v := range ta {
		binary.LittleEndian.PutUint32(buf[4*i:], uint32(v))
	}
	t.Logf("table sha256 %x", sha256.Sum256(buf))
}

func TestTableWeights(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []Backend
	}{
		{"equal", []Backend{{"a", 1}, {"b", 1}, {"c", 1}}},
		{"1:2:3", []Backend{{"a", 1}, {"b", 2}, {"c", 3}}},
		{"zero left out", []Backend{{"a", 5}, {"b", 0}, {"c", 5}}},
		{"many", func() []Backend {
			var bs []Backend
			for i := range 50 {
				bs = append(bs, Backend{fmt.Sprintf("192.0.2.%d:80", i+1), uint32(1 + i%3)})
			}
			return bs
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := Table(tc.backends, DefaultSize)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]int, len(tc.backends))
			for _, i := range table {
				if i < 0 {
					t.Fatal("unfilled slot")
				}
				got[i]++
			}
			var sum float64
			for _, b := range tc.backends {
				sum += float64(b.Weight)
			}
			for i, b := range tc.backends {
				want := float64(b.Weight) / sum
				share := float64(got[i]) / float64(len(table))
				if math.Abs(share-want) > 0.005 {
					t.Errorf("backend %s: share %.4f, want %.4f", b.ID, share, want)
				}
			}
		})
	}
}

// Removing one backend moves few slots that belonged to the others.
func TestTableDisruption(t *testing.T) {
	var bs []Backend
	for i := range 10 {
		bs = append(bs, Backend{fmt.Sprintf("rs%d", i), 1})
	}
	before, err := Table(bs, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	after, err := Table(bs[:9], DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range before {
		if before[i] != 9 && before[i] != after[i] {
			moved++
		}
	}
	if frac := float64(moved) / float64(len(before)); frac > 0.05 {
		t.Errorf("%.1f%% of surviving slots moved, want < 5%%", 100*frac)
	}
}

func TestTableErrors(t *testing.T) {
	if _, err := Table(nil, 65536); !errors.Is(err, ErrSize) {
		t.Errorf("size 65536: got %v, want ErrSize", err)
	}
	if _, err := Table([]Backend{{"a", 1}, {"a", 2}}, 7); err == nil {
		t.Error("duplicate IDs accepted")
	}
	table, err := Table([]Backend{{"a", 0}}, 7)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int32{-1, -1, -1, -1, -1, -1, -1}, table); diff != "" {
		t.Errorf("no weighted backend (-want +got):\n%s", diff)
	}
}
