package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// The address index mirrors idx_find in bpf/lb.h: IDX_BUCKETS buckets of
// IDX_WAYS slots, a key in one of two buckets chosen by a multiplicative
// hash. The programs find services and owned addresses in it with inlined
// array loads instead of hash-map calls.
const (
	idxBuckets  = 1024
	idxWays     = 4
	idxShift1   = 54
	idxShift2   = 44
	idxMult     = 0x9e3779b97f4a7c15
	idxTagSvc   = 1 << 56
	idxTagOwned = 2 << 56
)

func svcIndexKey(k ServiceKey) uint64 {
	return uint64(be32(k.VIP)) | uint64(be16(k.Port))<<32 | uint64(k.Proto)<<48 | idxTagSvc
}

func ownedIndexKey(a netip.Addr) uint64 { return uint64(be32(a)) | idxTagOwned }

// ownedIndexVal packs an owned address's lease index and OWN_* flags.
func ownedIndexVal(leaseIdx, flags uint32) uint32 { return leaseIdx&0xffff | flags<<16 }

func idxBucketsOf(key uint64) [2]uint32 {
	h := key * idxMult
	return [2]uint32{uint32(h >> idxShift1), uint32(h>>idxShift2) & (idxBuckets - 1)}
}

// vipIndex is Go's copy of the vip_index map.
type vipIndex struct {
	m *ebpf.Map
	b [idxBuckets]directorIdxBucket
}

func (x *vipIndex) find(key uint64) (bucket uint32, way int, ok bool) {
	for _, b := range idxBucketsOf(key) {
		for w := range idxWays {
			if x.b[b].Key[w] == key {
				return b, w, true
			}
		}
	}
	return 0, 0, false
}

func (x *vipIndex) write(b uint32) error {
	if err := x.m.Put(b, x.b[b]); err != nil {
		return fmt.Errorf("write address index bucket %d: %w", b, err)
	}
	return nil
}

// put maps key to val. A new slot gets its value written before its key,
// so a program never matches a key with a stale value.
func (x *vipIndex) put(key uint64, val uint32) error {
	if b, w, ok := x.find(key); ok {
		if x.b[b].Val[w] == val {
			return nil
		}
		x.b[b].Val[w] = val
		return x.write(b)
	}
	// The emptier of the two buckets keeps both short.
	bs := idxBucketsOf(key)
	b, w := uint32(0), -1
	free := 0
	for _, cand := range bs {
		n, first := 0, -1
		for i := range idxWays {
			if x.b[cand].Key[i] == 0 {
				n++
				if first < 0 {
					first = i
				}
			}
		}
		if n > free {
			b, w, free = cand, first, n
		}
	}
	if w < 0 {
		return fmt.Errorf("add to address index: buckets %d and %d full: %w", bs[0], bs[1], ErrInvalid)
	}
	x.b[b].Val[w] = val
	if err := x.write(b); err != nil {
		return err
	}
	x.b[b].Key[w] = key
	return x.write(b)
}

// del removes key; a missing key is not an error.
func (x *vipIndex) del(key uint64) error {
	b, w, ok := x.find(key)
	if !ok {
		return nil
	}
	x.b[b].Key[w] = 0
	x.b[b].Val[w] = 0
	return x.write(b)
}
