package dataplane

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ctTable is the Go side of a connection-style table (struct ct_bucket in
// bpf/lb.h): the map's memory mapped into this process, searched and
// changed in place by the same rules the programs follow. Lookups and
// walks take no lock; inserts and deletes hold the key's home-bucket lock,
// which the programs take too.
type ctTable struct {
	mem     []byte // the mapping; nil for a table in Go memory (tests)
	buckets []directorCtBucket
	seed    uint64
}

const (
	ctWays = 8
	// A key goes home while its home bucket holds fewer keys than this
	// (CT_HOME_WAYS).
	ctHomeWays = 5
	ctTagBusy  = 2
	// ctTagDead marks a deleted slot until reap frees it: a program may
	// still be writing through a pointer it found before the delete.
	ctTagDead = 4
	// ctLoad is the share of slots the nominal capacity fills: with two
	// choices of bucket, almost no insert finds both full below it.
	ctLoadNum, ctLoadDen = 3, 4
)

// ctBuckets is how many buckets hold entries at ctLoad.
func ctBuckets(entries int) uint32 {
	slots := (entries*ctLoadDen + ctLoadNum - 1) / ctLoadNum
	return uint32(max(1, (slots+ctWays-1)/ctWays))
}

// ctBucketSize is the size of one bucket, in the map and in memory.
const ctBucketSize = int(unsafe.Sizeof(directorCtBucket{}))

// mapCT maps m's memory.
func mapCT(m *ebpf.Map, seed uint64) (*ctTable, error) {
	if int(m.ValueSize()) != ctBucketSize {
		return nil, fmt.Errorf("map %s: value size %d, want %d", m, m.ValueSize(), ctBucketSize)
	}
	n := int(m.MaxEntries())
	size := (n*ctBucketSize + os.Getpagesize() - 1) &^ (os.Getpagesize() - 1)
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map connection table into memory: %w", err)
	}
	return &ctTable{
		mem:     mem,
		buckets: unsafe.Slice((*directorCtBucket)(unsafe.Pointer(&mem[0])), n),
		seed:    seed,
	}, nil
}

// newMemCT is a table in Go memory, for tests of the rules themselves.
func newMemCT(buckets int, seed uint64) *ctTable {
	return &ctTable{buckets: make([]directorCtBucket, buckets), seed: seed}
}

func (t *ctTable) close() error {
	if t == nil || t.mem == nil {
		return nil
	}
	err := unix.Munmap(t.mem)
	t.mem, t.buckets = nil, nil
	return err
}

// ctKey is a table key as the programs read it: 16 bytes, two words.
type ctKey [2]uint64

// ctVal is a slot's 32-byte value: a directorConn or a directorRnat.
type ctVal = [32]byte

type ctSlot struct {
	Key ctKey
	Val ctVal
}

func connCTKey(k directorConnKey) ctKey { return *(*ctKey)(unsafe.Pointer(&k)) }
func rnatCTKey(k directorRnatKey) ctKey { return *(*ctKey)(unsafe.Pointer(&k)) }

func ctConnKey(k ctKey) directorConnKey { return *(*directorConnKey)(unsafe.Pointer(&k)) }
func ctRnatKey(k ctKey) directorRnatKey { return *(*directorRnatKey)(unsafe.Pointer(&k)) }

func connVal(v *ctVal) *directorConn { return (*directorConn)(unsafe.Pointer(v)) }
func rnatVal(v *ctVal) *directorRnat { return (*directorRnat)(unsafe.Pointer(v)) }

func connCTVal(c directorConn) (v ctVal) {
	*connVal(&v) = c
	return v
}

func rnatCTVal(r directorRnat) (v ctVal) {
	*rnatVal(&v) = r
	return v
}

// ctHash mirrors ct_hash in bpf/lb.h: home and alternate bucket, and tag.
func ctHash(k ctKey, seed uint64, n uint32) (home, alt, tag uint32) {
	h := (k[0] ^ seed) * 0x9e3779b97f4a7c15
	h = (h ^ h>>32 ^ k[1]) * 0xc2b2ae3d27d4eb4f
	h ^= h >> 29
	h *= 0x165667b19e3779f9
	h ^= h >> 32
	home = uint32((h & 0xffffffff) * uint64(n) >> 32)
	alt = uint32((h >> 32) * uint64(n) >> 32)
	tag = uint32(h*0x9e3779b97f4a7c15>>32) | 1
	return home, alt, tag
}

func (t *ctTable) slot(b uint32, w int) *ctSlot {
	return (*ctSlot)(unsafe.Pointer(&t.buckets[b].Slot[w]))
}

func (t *ctTable) lock(b uint32) {
	l := &t.buckets[b].Lock
	for i := 0; !atomic.CompareAndSwapUint32(l, 0, 1); i++ {
		if i >= 64 {
			runtime.Gosched()
		}
	}
}

func (t *ctTable) unlock(b uint32) { atomic.StoreUint32(&t.buckets[b].Lock, 0) }

// findIn returns the way of bucket b holding k, or -1.
func (t *ctTable) findIn(b uint32, k ctKey, tag uint32) int {
	bk := &t.buckets[b]
	for w := range ctWays {
		if atomic.LoadUint32(&bk.Tag[w]) == tag && bk.Slot[w].Key == k {
			return w
		}
	}
	return -1
}

func (t *ctTable) find(k ctKey) (b uint32, w int) {
	home, alt, tag := ctHash(k, t.seed, uint32(len(t.buckets)))
	return t.findBoth(home, alt, k, tag)
}

// findBoth returns the bucket and way holding k, w -1 if neither does.
// Like ct_find, it reads the alternate bucket only when home has sent
// keys away.
func (t *ctTable) findBoth(home, alt uint32, k ctKey, tag uint32) (b uint32, w int) {
	if w = t.findIn(home, k, tag); w >= 0 || home == alt || atomic.LoadUint32(&t.buckets[home].Away) == 0 {
		return home, w
	}
	return alt, t.findIn(alt, k, tag)
}

// lookup copies k's value.
func (t *ctTable) lookup(k ctKey) (ctVal, bool) {
	b, w := t.find(k)
	if w < 0 {
		return ctVal{}, false
	}
	return t.slot(b, w).Val, true
}

// update calls fn on k's value in place, under k's lock, and reports
// whether k was there. The programs write without the lock: fn must only
// store what is fine to lose to a packet's concurrent store.
func (t *ctTable) update(k ctKey, fn func(v *ctVal)) bool {
	home, _, _ := ctHash(k, t.seed, uint32(len(t.buckets)))
	t.lock(home)
	defer t.unlock(home)
	b, w := t.find(k)
	if w < 0 {
		return false
	}
	fn(&t.slot(b, w).Val)
	return true
}

// put inserts or overwrites k; it returns the value it replaced, if any.
func (t *ctTable) put(k ctKey, v ctVal) (old ctVal, replaced bool, err error) {
	home, alt, tag := ctHash(k, t.seed, uint32(len(t.buckets)))
	t.lock(home)
	defer t.unlock(home)
	if b, w := t.findBoth(home, alt, k, tag); w >= 0 {
		s := t.slot(b, w)
		old = s.Val
		s.Val = v
		return old, true, nil
	}
	first, second := home, alt
	if used := t.used(home); home != alt && used >= ctHomeWays && t.used(alt) < used {
		first, second = alt, home
	}
	for _, b := range []uint32{first, second} {
		if t.claim(b, k, v, tag) {
			if b != home {
				atomic.AddUint32(&t.buckets[home].Away, 1)
			}
			return old, false, nil
		}
	}
	return old, false, ErrTableFull
}

func (t *ctTable) used(b uint32) int {
	n := 0
	for w := range ctWays {
		if atomic.LoadUint32(&t.buckets[b].Tag[w]) != 0 {
			n++
		}
	}
	return n
}

// claim writes k and v into a free slot of bucket b and publishes it.
func (t *ctTable) claim(b uint32, k ctKey, v ctVal, tag uint32) bool {
	bk := &t.buckets[b]
	for w := range ctWays {
		if !atomic.CompareAndSwapUint32(&bk.Tag[w], 0, ctTagBusy) {
			continue
		}
		s := t.slot(b, w)
		s.Key, s.Val = k, v
		atomic.StoreUint32(&bk.Tag[w], tag) // release: key and value are visible first
		return true
	}
	return false
}

// deleteIf removes k if doomed (nil: always), given its current value,
// agrees; it returns the removed value.
func (t *ctTable) deleteIf(k ctKey, doomed func(v *ctVal) bool) (ctVal, bool) {
	home, alt, tag := ctHash(k, t.seed, uint32(len(t.buckets)))
	t.lock(home)
	defer t.unlock(home)
	b, w := t.findBoth(home, alt, k, tag)
	if w < 0 {
		return ctVal{}, false
	}
	s := t.slot(b, w)
	if doomed != nil && !doomed(&s.Val) {
		return ctVal{}, false
	}
	v := s.Val
	atomic.StoreUint32(&t.buckets[b].Tag[w], ctTagDead)
	if b != home {
		atomic.AddUint32(&t.buckets[home].Away, ^uint32(0))
	}
	return v, true
}

// walk calls fn with a copy of every entry; it takes no lock, so entries
// inserted or deleted meanwhile may or may not be seen.
func (t *ctTable) walk(fn func(k ctKey, v *ctVal)) {
	for b := range t.buckets {
		bk := &t.buckets[b]
		for w := range ctWays {
			tag := atomic.LoadUint32(&bk.Tag[w])
			if tag&1 == 0 {
				continue
			}
			s := *t.slot(uint32(b), w)
			// Reused while copied: it is another entry now.
			if atomic.LoadUint32(&bk.Tag[w]) != tag {
				continue
			}
			fn(s.Key, &s.Val)
		}
	}
}

// reap frees the slots deleted so far (by Go or by the programs) once
// sync has returned: sync must wait until every program that could have
// found them before their delete has finished (an RCU grace period).
// Only reap frees slots; callers serialise it.
func (t *ctTable) reap(sync func() error) (int, error) {
	type pos struct {
		b uint32
		w int
	}
	var dead []pos
	for b := range t.buckets {
		for w := range ctWays {
			if atomic.LoadUint32(&t.buckets[b].Tag[w]) == ctTagDead {
				dead = append(dead, pos{uint32(b), w})
			}
		}
	}
	if len(dead) == 0 {
		return 0, nil
	}
	if err := sync(); err != nil {
		return 0, err
	}
	for _, p := range dead {
		atomic.CompareAndSwapUint32(&t.buckets[p.b].Tag[p.w], ctTagDead, 0)
	}
	return len(dead), nil
}

// slots is the table's capacity in slots; the nominal capacity is ctLoad
// of it.
func (t *ctTable) slots() int { return len(t.buckets) * ctWays }
