// Package agent is the realserver side of raftlb: it registers with a
// director, watches its desired configuration over gRPC (AgentService) and
// converges the realserver's kernel to it, reporting what it applied.
//
// # What it owns
//
// The agent owns exactly the kernel objects it created and nothing else, and
// records them in a JSON file in its state directory (default
// /var/lib/raftlb-agent/state.json), written before each object is created
// and after each is removed, so a crash never leaks one:
//
//   - DR and TUN VIPs as /32 addresses on lo, as LVS does. A VIP is put on lo
//     only once ARP is fenced, or the realserver would answer ARP for it.
//   - arp_ignore=1 and arp_announce=2 on "all" and each facing interface
//     (the kernel uses the larger of the two values). An arp_ignore of 2 or 8
//     already fences a VIP on lo and is kept; 0, 3 (which still answers for
//     global addresses such as the VIPs) and the reserved 4-7 are set to 1.
//     The value found before
//     is restored when no DR or TUN VIP is left, unless someone changed the
//     sysctl since the agent set it: then the value is theirs.
//   - For TUN: rp_filter relaxed to 2 (loose) where it is strict (1) on "all",
//     the facing interfaces and the tunnel; 0 and 2 are left alone. Decapsulated
//     packets arrive on an interface the reply does not leave by.
//   - For TUN, decapsulation: a flow-based ("external") ipip device, rlbtun0,
//     which receives IP-in-IP from any source without clashing with the
//     fallback tunl0. Where the kernel has no ipip (creating the link answers
//     "not supported"), a Decapper is attached to each facing interface
//     instead: by default BPFDecapper, dataplane's TC ingress program, which
//     like tunl0 accepts any outer source; the clsact qdisc it needs is
//     removed with it only if the agent created it. Status.DecapMode says
//     which ("ipip" or "bpf"). The choice is kept across restarts.
//   - Source policy rules "from X [ipproto P sport N] lookup T" at RulePriority (default 4242,
//     before the main table) and the routes of two tables that are the
//     agent's (NATTable 4242 and MSSTable 4243 by default).
//
// # TUN and the MSS
//
// The director adds a 20-byte outer header to every packet it tunnels, so a
// full-size segment from the client no longer fits the director→realserver
// path. The client's segment size is set by the MSS the realserver advertises
// in its SYN-ACK, which goes straight back to the client, so the answer lives
// here: replies from a TUN VIP are routed by a rule "from VIP lookup MSSTable",
// and MSSTable mirrors the main table's routes through the facing interfaces
// with advmss set to the interface MTU − 20 − 40 (1440 on a 1500-byte link;
// Config.TunnelMSS overrides it). The kernel takes a SYN-ACK's MSS from the
// route of the reply, so only TUN VIPs' connections are clamped; everything
// else on the host keeps its MSS. The mirror follows the main table on every
// pass; a destination it lacks falls through to the main table unclamped.
// UDP has no MSS: UDP over TUN needs datagrams that fit, or a larger MTU on the
// director→realserver path.
//
// # NAT
//
// Replies from a NAT realserver's inside address must go back through the
// gateway address the directors own. One rule per NAT service, "from SOURCE
// ipproto P sport PORT lookup NATTable" (Linux 4.17 or later), sends them to
// a table holding a default route via the gateway and the gateway's on-link
// subnet, so on-link peers (such as directors' health checks) are still
// answered directly. Only the services' replies match: the realserver's own
// traffic from the same address (DNS, package updates, monitoring) keeps the
// main table, since the directors forward nothing else. A director that
// sends no nat_services (one older than the field) gets the whole-source rule
// "from SOURCE lookup NATTable" instead, which catches that traffic too.
//
// # Lifecycle
//
// Run reconciles on every new generation and every ResyncInterval (2 s),
// repairing drift: a VIP deleted from lo, a flipped sysctl, a missing rule or
// route. A restarted agent reads its record, re-applies the last desired
// config before it reaches a director and changes nothing that is already in
// place, so restarts cause no traffic blip. Run never tears down: when its
// context ends the configuration stays. Cleanup removes everything in the
// record, for a deregistered realserver ("raftlb agent --cleanup").
//
// One agent runs per network namespace and per state directory: Run holds an
// flock on the state directory (Cleanup too, so it refuses while an agent
// runs) and, on the real kernel, the abstract unix socket "@raftlb-agent",
// which belongs to the network namespace and is freed by the kernel however
// the process ends. A second agent fails at once with ErrAlreadyRunning.
//
// Generations are the cluster's replicated generation: an agent ignores one
// older than what it applied (a lagging director after a failover). A cluster
// rebuilt from scratch starts its generations again, so its realservers need
// Cleanup first.
//
// All privileged work goes through the Kernel interface (vishvananda/netlink
// and /proc/sys, never the ip or sysctl commands), so the reconcile logic is
// tested with a fake, and against the real kernel in a namespace.
package agent
