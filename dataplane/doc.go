// Package dataplane is the director's packet path: the XDP and TC
// programs under bpf/ (built with bpf2go; the generated *_bpfel.go and
// *_bpfel.o are committed so no clang is needed to build) and the Go API
// that loads them and programs their maps from the replicated state.
//
// It owns:
//   - XDP on the front interface: ARP and ICMP echo for owned addresses
//     (VIPs), DR (MAC rewrite, XDP_TX) and TUN (IPv4-in-IPv4, XDP_TX; the
//     outer header always carries DF, as Linux ipip with pmtudisc);
//     ICMP errors about a DR or TUN connection go to its realserver.
//     The front program is two: xdp_front, a small fast path for packets
//     of recorded connections whose state and events need no update, and
//     xdp_front_full (everything, from the start), which xdp_front tail
//     calls for any other packet. A small program runs faster when
//     packets are few and its code and data are out of the cache; the
//     fast path changes nothing before it hands a packet on, and a test
//     runs the same frames through both to hold them to the same result.
//     While the connection table is crowded (at least half full at the
//     last sweep, as under a flood of new flows) the fast path steps
//     aside, since most of its lookups would miss and be repeated.
//   - XDP on the inside interface: ARP and ICMP echo for the NAT gateway.
//   - TC (tcx ingress) on both: NAT in both directions with checksum
//     helpers that are right for full and partial checksums and GSO, and
//     bpf_redirect_neigh; also DR/TUN for GSO packets too big for XDP to
//     encapsulate (generic XDP on veth), so the kernel can segment them.
//     XDP schedules every VIP packet (the method belongs to the
//     realserver it picks) and passes a NAT one, or a GSO one for TC to
//     encapsulate, on with that pick in XDP metadata (tc_xdp_pick), bound
//     to the flow and the realserver's address, so TC does not search the
//     connection table again; where a driver keeps no metadata, TC finds
//     the connection XDP recorded.
//   - TUN packets too big for the tunnel: one that is not GSO and would
//     not fit the front MTU once encapsulated is answered as IPVS answers
//     it. With DF set, the client gets ICMP "fragmentation needed" from
//     the VIP, next-hop MTU the front MTU less 20, quoting the IP header
//     and 8 bytes of payload (tc_tx_frag_needed; lease-gated). Without DF
//     it is dropped and counted (drop_too_big): IPVS would fragment the
//     outer packet, and BPF cannot fragment; such senders (large UDP
//     without path-MTU discovery) need a smaller MTU towards TUN VIPs. So
//     is an ICMP error about a TUN connection, or a packet from a source
//     that is not one host: no ICMP error answers those (RFC 1122).
//   - ICMP errors (destination unreachable, time exceeded) about a NAT
//     connection, translated in TC like the connection itself, quoted
//     header included, so path-MTU discovery works through NAT: one to a
//     VIP quoting VIP:vport→client goes to the realserver with the outer
//     destination and quoted source rewritten to RIP:rport; one on the
//     inside quoting client→RIP:rport (found by its reverse-NAT entry)
//     goes to the client from the VIP, quoted destination VIP:vport. The
//     quoted IP checksum and the ICMP checksum are updated; the quoted L4
//     checksum is left as it is (quotes are usually truncated). Lease-gated;
//     one about a NAT connection that cannot be translated is dropped and
//     counted, never passed to the kernel. Errors do not refresh
//     connections.
//   - The connection and reverse-NAT tables: arrays of two-choice,
//     eight-way buckets (a key stays in its home bucket while that holds
//     fewer than five, and the home bucket counts the keys it sent away,
//     so a lookup or insert mostly reads one bucket; while the table is
//     crowded, lookups fetch both at once; not an LRU; entries leave only through the
//     sweeper, which reports them), mapped into the Go process, which
//     lists, installs and expires entries in place (cttable.go). The
//     programs find a connection with inlined loads and record a new one
//     with a few atomics; a kernel hash map costs a call per lookup and a
//     locked, freelist-backed insert of several hundred ns. Inserts and
//     deletes of a key hold its home bucket's lock, so no key is ever
//     recorded twice; lookups take no lock. A deleted slot stays dead
//     (neither found nor reused) until the sweeper frees it after an RCU
//     grace period, so a program still writing through a pointer it found
//     earlier never writes into another connection's entry. A packet that
//     finds the lock taken too long is forwarded unrecorded
//     (conn_table_busy); a TCP connection first recorded mid-stream is
//     scheduled by flow hash, the pick an unrecorded SYN got. The hash is seeded at random
//     per load. Also persistence tables, per-service lookup tables
//     (Maglev, computed in dataplane/maglev), leases, per-CPU counters
//     and the event ring.
//   - The address index: services and owned addresses in a two-choice,
//     four-way bucketed array (vip_index), found with inlined array loads
//     too. An established packet makes no hash-map lookup at all.
//   - TC (tcx egress) on the front interface: the director's own packets
//     whose mark SetTunProbe registered (the health prober's TUN probes,
//     policy-routed towards the realserver's next hop) leave
//     IPv4-in-IPv4 to that realserver, from the front address with DF;
//     every other packet leaves untouched.
//   - InstallDecap/RemoveDecap: the realserver's TC decapsulation program
//     for kernels without the ipip module.
//
// Fencing: every answer and every forwarded packet for an owned address
// is gated by that address's lease deadline (CLOCK_MONOTONIC, tick
// resolution) in a BPF map; SetLease extends it. The programs read the
// clock as jiffies scaled by a calibration made at load, which runs at
// most two ticks ahead: a lease ends that much early, never late. When the deadline passes,
// or the process dies and its XDP/tcx links go with it, the director falls
// silent by itself. No VIP or gateway address is put on a kernel
// interface. Traffic for an owned address that no program translates is
// dropped, never handed to the kernel.
//
// Connections: an entry maps the client 5-tuple to a realserver; its state
// follows the client's TCP flags as in LVS (SYN_RECV, ESTABLISHED,
// FIN_WAIT, CLOSE after an RST; UDP), with per-service idle timeouts
// (IPVS defaults). A connection first seen mid-stream (a standby that
// just took over) is forwarded to the realserver its scheduler picks
// (Maglev: the same one the old owner used) and starts in SYN_RECV; its
// next packet promotes it, so a stray ACK never holds an entry for the
// established timeout. Run's sweeper removes idle entries and reports
// each as EventClose, deleting in chunks so that other calls never wait
// behind a mass expiry (SetLease has a lock of its own and never waits
// behind any); the programs report new entries, state changes and
// periodic refreshes of live ones, from either direction of a NAT flow.
// A connection keeps its realserver while that realserver is configured
// (drained, weight 0 or unhealthy included); when its realserver is
// removed, its next packet is scheduled afresh. When the table or the
// ring is full, packets are still forwarded and the loss is counted: mh
// and sh agree across directors, and rr, wrr, lc and wlc fall back to a
// flow hash over their table so that an unrecorded flow stays on one
// realserver. NAT replies are translated from the reverse-NAT entry
// alone, which is written even when the connection did not fit; the
// sweeper expires such an entry after the service's SYN_RECV (TCP) or UDP
// timeout without a packet.
//
// Sysctls: Open sets, for the front and inside interfaces,
//   - net.ipv4.conf.<iface>.forwarding=0: what the programs pass up is
//     meant for the director itself; a NAT reply or VIP packet that misses
//     its table entry must die here instead of being routed on
//     untranslated. bpf_redirect_neigh and XDP_TX need no forwarding.
//   - net.ipv4.conf.<iface>.send_redirects=0: the director never tells
//     hosts to bypass it.
//
// rp_filter needs no change: translated packets are redirected before the
// IP layer's source check. Run checks them every NeighInterval and sets
// back, with a warning, any that someone changed (net.ipv4.ip_forward=1
// turns every interface's forwarding on); Stats.SysctlRepairs counts it.
// Config.KeepSysctls leaves all of them alone.
//
// Next hops: DR and TUN take their next-hop MACs from the kernel's
// neighbour table. Where a next hop has no entry the dataplane adds a
// kernel-managed one (resolved and kept resolved by the kernel) and
// deletes it again once no realserver needs that next hop, or at Close; a
// dynamic entry it finds is marked managed meanwhile and then unmarked,
// and permanent entries are never touched.
//
// Attach mode: generic XDP on veth (native XDP on veth needs a program on
// the peer and loses partial checksums), native on other NICs, with a
// fallback to generic; Config.AttachMode overrides.
package dataplane
