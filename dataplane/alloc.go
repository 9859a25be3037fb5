package dataplane

// idAlloc hands out the lowest free index below a limit, so indexes stay
// small and stable while their owner lives.
type idAlloc struct {
	limit uint32
	used  map[uint32]bool
}

func newIDAlloc(limit uint32) idAlloc { return idAlloc{limit: limit, used: make(map[uint32]bool)} }

func (a *idAlloc) take() (uint32, bool) {
	for i := uint32(0); i < a.limit; i++ {
		if !a.used[i] {
			a.used[i] = true
			return i, true
		}
	}
	return 0, false
}

func (a *idAlloc) put(i uint32) { delete(a.used, i) }
