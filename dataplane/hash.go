package dataplane

// flowHash mirrors flow_hash in bpf/lb.h: a 64-bit finalizer (MurmurHash3
// fmix64) over the client address and ports as they lie in the packet.
func flowHash(saddr uint32, ports uint32) uint32 {
	x := uint64(saddr)<<32 | uint64(ports)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return uint32(x)
}

// mhSlot is the Maglev slot the mh scheduler picks for a client: the
// hash scaled to the table by multiply-shift, which costs less than a
// division and is as even.
func mhSlot(k directorConnKey, size uint32) uint32 {
	return uint32(uint64(flowHash(k.Saddr, uint32(k.Sport)<<16|uint32(k.Dport))) * uint64(size) >> 32)
}
