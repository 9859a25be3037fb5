// Command pps measures packets per second through a director in a lab of
// network namespaces (prefix rlbpb): raftlb's DR, TUN and NAT paths against
// an XDP program that only rewrites MACs and bounces, nftables DNAT (jhash
// and numgen maps, as kube-proxy's nftables mode builds them) and the
// client sending straight to a realserver. A TC program on each realserver
// counts and drops (newSink says why not XDP). Every path runs once per
// cycle, in a random order, so ratios are taken between runs minutes apart
// at most. After the cycles, one more run per path and mix is recorded by
// perf (-perf, on by default) for the director's own cost per packet: the
// time of the samples with a function only the director runs on that path
// on their call chain (perf.go), over the packets counted meanwhile. The time per packet minus
// the straight path's is kept as a secondary view. It writes a markdown
// section for BENCHMARKS.md. -paths and -mixes pick a subset for quick
// iterations; the report then leaves out what needs a path or mix that did
// not run.
//
// Test tooling, run as root by `make bench`: it execs ip(8), nft(8),
// conntrack(8), trafgen(8) and perf(1), and uses only 192.0.2.0/24,
// 198.51.100.0/24 and 203.0.113.0/24 inside its own namespaces, which it
// removes on exit.
package main
