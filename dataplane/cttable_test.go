package dataplane

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

func randomKey(r *rand.Rand) ctKey {
	k := directorConnKey{Saddr: r.Uint32(), Daddr: r.Uint32(), Sport: uint16(r.Uint32()), Dport: uint16(r.Uint32()), Proto: 6}
	return connCTKey(k)
}

// The nominal capacity fits: two choices of bucket leave almost no key
// with both buckets full at ctLoad.
func TestCTTableCapacity(t *testing.T) {
	for _, entries := range []int{1000, 1 << 16, 1 << 18} {
		tb := newMemCT(int(ctBuckets(entries)), 42)
		r := rand.New(rand.NewPCG(1, uint64(entries)))
		full := 0
		for range entries {
			if _, _, err := tb.put(randomKey(r), ctVal{1}); err != nil {
				full++
			}
		}
		if full*10000 > entries { // 0.01%
			t.Errorf("%d entries in %d slots: %d did not fit", entries, tb.slots(), full)
		}
		n := 0
		tb.walk(func(ctKey, *ctVal) { n++ })
		if n != entries-full {
			t.Errorf("%d entries: walk saw %d, want %d", entries, n, entries-full)
		}
		checkAway(t, tb)
	}
}

func TestCTTableOps(t *testing.T) {
	tb := newMemCT(4, 7)
	r := rand.New(rand.NewPCG(2, 3))
	// 4 buckets of 8 slots: keys go in until both of a key's buckets
	// are full, and those that do not fit say so.
	var keys []ctKey
	for i := range 60 {
		k := randomKey(r)
		_, replaced, err := tb.put(k, ctVal{byte(len(keys))})
		switch {
		case err == nil && !replaced:
			keys = append(keys, k)
		case err != ErrTableFull:
			t.Fatalf("put %d: replaced %v, err %v", i, replaced, err)
		}
	}
	if len(keys) < 24 || len(keys) > 32 {
		t.Fatalf("%d keys fit in 32 slots", len(keys))
	}
	checkAway(t, tb)
	for i, k := range keys {
		if v, ok := tb.lookup(k); !ok || v[0] != byte(i) {
			t.Fatalf("lookup %d: %v %v", i, v[0], ok)
		}
	}
	if old, replaced, err := tb.put(keys[3], ctVal{99}); err != nil || !replaced || old[0] != 3 {
		t.Fatalf("overwrite: old %d replaced %v err %v", old[0], replaced, err)
	}
	if _, ok := tb.deleteIf(keys[3], func(v *ctVal) bool { return v[0] == 3 }); ok {
		t.Fatal("deleteIf deleted although its condition said no")
	}
	if v, ok := tb.deleteIf(keys[3], nil); !ok || v[0] != 99 {
		t.Fatalf("delete: %v %v", v[0], ok)
	}
	if _, ok := tb.lookup(keys[3]); ok {
		t.Fatal("deleted key still found")
	}
	checkAway(t, tb)
	if !tb.update(keys[4], func(v *ctVal) { v[1] = 5 }) {
		t.Fatal("update of a present key failed")
	}
	if v, _ := tb.lookup(keys[4]); v[1] != 5 {
		t.Fatal("update not visible")
	}
	// A deleted slot is reused only after reap's grace period: a program
	// may still be writing through a pointer to it.
	synced := false
	if n, err := tb.reap(func() error { synced = true; return nil }); err != nil || n != 1 || !synced {
		t.Fatalf("reap: %d freed, synced %v, err %v; want 1 freed after a sync", n, synced, err)
	}
	if n, _ := tb.reap(func() error { t.Fatal("sync without dead slots"); return nil }); n != 0 {
		t.Fatalf("second reap freed %d", n)
	}
	// The freed slot takes the key again.
	if _, _, err := tb.put(keys[3], ctVal{3}); err != nil {
		t.Fatalf("reinsert: %v", err)
	}
	checkAway(t, tb)
	for i, k := range keys {
		if _, ok := tb.deleteIf(k, nil); !ok {
			t.Fatalf("delete %d: not found", i)
		}
	}
	checkAway(t, tb)
}

// checkAway: every bucket counts exactly the keys of its home that live
// in their alternate bucket, which lookups rely on to skip that bucket.
func checkAway(t *testing.T, tb *ctTable) {
	t.Helper()
	want := make([]uint32, len(tb.buckets))
	tb.walk(func(k ctKey, _ *ctVal) {
		home, alt, tag := ctHash(k, tb.seed, uint32(len(tb.buckets)))
		if tb.findIn(home, k, tag) < 0 {
			if alt == home || tb.findIn(alt, k, tag) < 0 {
				t.Fatalf("key %x in neither of its buckets", k)
			}
			want[home]++
		}
	})
	for b := range tb.buckets {
		if got := tb.buckets[b].Away; got != want[b] {
			t.Fatalf("bucket %d counts %d keys away, %d are", b, got, want[b])
		}
	}
}

// Concurrent inserts of the same keys leave each key once: the home
// bucket's lock serialises them, as it does for the programs.
func TestCTTableConcurrentPut(t *testing.T) {
	// The smaller table sends keys away from their home buckets.
	for _, entries := range []int{16384, 8192} {
		t.Run(fmt.Sprint(entries), func(t *testing.T) { concurrentPut(t, entries) })
	}
}

func concurrentPut(t *testing.T, entries int) {
	// Room for every delete's dead slot too, however seldom the reaper
	// below gets to run.
	tb := newMemCT(int(ctBuckets(entries)), 9)
	r := rand.New(rand.NewPCG(4, 5))
	keys := make([]ctKey, 3000)
	for i := range keys {
		keys[i] = randomKey(r)
	}
	// One reaper frees deleted slots meanwhile, as the sweeper does.
	stop := make(chan struct{})
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		for {
			select {
			case <-stop:
				return
			default:
				tb.reap(func() error { return nil })
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, k := range keys {
				if _, _, err := tb.put(k, ctVal{byte(g), byte(i)}); err != nil {
					t.Errorf("put: %v", err)
					return
				}
				if i%3 == g%3 {
					tb.deleteIf(k, nil)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-reaped
	seen := make(map[ctKey]int)
	tb.walk(func(k ctKey, _ *ctVal) { seen[k]++ })
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("key %x is in the table %d times", k, n)
		}
	}
	checkAway(t, tb)
}

func BenchmarkCTTable(b *testing.B) {
	tb := newMemCT(int(ctBuckets(1<<18)), 1)
	r := rand.New(rand.NewPCG(6, 7))
	keys := make([]ctKey, 1<<17)
	for i := range keys {
		keys[i] = randomKey(r)
		tb.put(keys[i], ctVal{})
	}
	b.ResetTimer()
	for i := range b.N {
		tb.lookup(keys[i%len(keys)])
	}
}
