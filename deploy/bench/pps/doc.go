// Command pps measures packets per second through a director in a lab of
// network namespaces (prefix rlbpb): raftlb's DR, TUN and NAT paths against
// an XDP program that only rewrites MACs and bounces, nftables DNAT (jhash
// and numgen maps, as kube-proxy's nftables mode builds them) and the
// client sending straight to a realserver. A TC program on each realserver
// counts and drops (newSink says why not XDP).
//
// The traffic mixes are one flow, ~59k flows, and a new tuple per packet
// in two states of the director's tables: churn, from empty tables
// (conntrack flushed, raftlb with a table a run cannot fill), and flood,
// the steady state of a sustained flood, counted after a warm-up
// (-flood-warmup) long enough to fill tables of the default size. A new
// tuple is a random source address from 192.0.2.64 to 192.0.2.254 (no
// lab address or broadcast among them: the director's stack drops its
// own as a martian, which the XDP paths never check) and a random source
// port from 1024 to 65535: 191 × 64512 = 12,321,792 distinct tuples.
//
// In the flood, conntrack, at nf_conntrack_max, evicts an unreplied
// entry (early_drop) for each new one and so keeps admitting new flows.
// raftlb, its table full, forwards each new flow to the realserver
// Maglev picks without recording it (counted as conn_table_full); on DR
// and TUN that is all. On NAT the reverse-NAT table, as big as the
// connection table and written for every new flow, recorded or not, is
// full as well: each new flow's reverse entry fails too (rnat_table_full)
// and its replies cannot be translated back to the VIP, so new NAT flows
// cannot complete in that state, and raftlb-nat's flood rate is not
// comparable with the nft paths'. The report shows how full each table
// was at the start and the end of every counted window, and the
// refusals and evictions per packet the sink counted between those reads
// (tables.go); it says so when a flood run began before its table was
// full, or a churn run's table (conntrack's is far smaller than raftlb's
// churn table) reached its limit before the window ended.
//
// Every path runs once per cycle, in a random order, so ratios are taken
// between runs minutes apart at most. After the cycles, one more run per
// path and mix is recorded by perf (-perf, on by default) for the
// director's own cost per packet: the time of the samples with a function
// only the director runs on that path on their call chain (perf.go), over
// the packets counted meanwhile. The time per packet minus the straight
// path's is kept as a secondary view. It writes a markdown section for
// BENCHMARKS.md. -paths and -mixes pick a subset for quick iterations; the
// report then leaves out what needs a path or mix that did not run.
//
// Test tooling, run as root by `make bench`: it execs ip(8), nft(8),
// conntrack(8), trafgen(8) and perf(1), and uses only 192.0.2.0/24,
// 198.51.100.0/24 and 203.0.113.0/24 inside its own namespaces, which it
// removes on exit.
package main
