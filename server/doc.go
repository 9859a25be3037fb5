// Package server is the raftlb director daemon: one Raft voter of the
// cluster, its gRPC API and its memberlist presence.
//
// It owns
//   - the Raft node: a raft-boltdb log and stable store and a file snapshot
//     store under Config.DataDir, a TCP transport wrapped in mutual TLS whose
//     peers must hold director certificates, one-time bootstrap from
//     Config.Peers, and a leadership loop that runs a barrier after every win;
//   - the gRPC API (LoadBalancerService, ClusterService, AgentService,
//     ConnectionService, InternalService, health and reflection): handlers
//     are adapters that build a command or read the state machine; domain
//     errors become status codes in one place (toStatus);
//   - leader forwarding: a follower sends writes to the leader's
//     InternalService.Apply and consistent reads to the same RPC on the
//     leader, over one cached connection per leader, as a director client.
//     A forwarded write returns once the answering director has applied it
//     too, so a client reads its own writes wherever it asks. Writes are
//     retried only when the leader says "not the leader" (nothing happened);
//     a write caught by a leadership change is reported as Unavailable with
//     an unknown outcome, never silently repeated;
//   - authorization: one table mapping each method to the roles that may
//     call it, enforced by an interceptor where the call enters;
//   - memberlist among directors and witnesses, encrypted, carrying each
//     member's addresses as metadata. It informs status and leader address
//     discovery; Raft alone decides;
//   - Prometheus metrics on their own registry.
//
// The replicated state machine itself lives in server/fsm, certificates in
// server/pki. The dataplane plugs in through the Dataplane interface
// (WithDataplane, WithFSMOptions): Run drives its Reconcile from the
// state machine's change notifications.
//
// A full director's packet path is a PacketPath around the dataplane
// (packetpath.go). Reconcile converts the replicated state into a
// dataplane.State: every service and realserver (weight, method, drain;
// a DOWN verdict makes a realserver unhealthy, UNKNOWN is usable), every
// VIP and the NAT gateway, and this director's front address; every
// director holds all of them and its leases decide what it answers for. An
// entry the dataplane refuses is logged, counted and left out, never
// blocking the rest. A replicated FlushConnections reaches every
// director's table through the state machine's connection hook, in log
// order. ConnectionService lists the answering director's live table;
// service reads carry its counters; /metrics reads the dataplane's
// counters and the health verdicts at every scrape.
//
// Health (healthcheck.go): every full director runs a server/health
// Checker over the realservers of every service with a check; only the
// owner of a VIP proposes verdicts for its services (HealthVerdicts), and
// only once it has a view of its own. A realserver some agent registered
// an address for is DOWN when that agent has not reported for
// Config.AgentTimeout. When a realserver goes DOWN in a service whose
// failure policy is reschedule or drop, the state machine drops its
// replicated connections and each director its local entries; their next
// packets are scheduled afresh (a TCP peer then sees a reset). DR and TUN
// realservers are probed through their forwarding path (pathdialer.go):
// probe sockets connect to the VIP and carry a mark (0x52420000 + slot)
// that a rule at priority 4300 sends to a table (43000 + slot) whose
// default route leaves the front interface. For DR it goes via the
// realserver, on-link, so the probe reaches the realserver's MAC addressed
// to the VIP, as forwarded traffic does. For TUN it goes via the
// realserver's next hop with an MTU 20 bytes short, and the dataplane's TC
// egress program on the front interface encapsulates packets with that
// mark (IPv4-in-IPv4 from the front address to the realserver, DF set,
// registered with SetTunProbe before the rule exists), so no ipip device
// is needed. The director owns those rules and tables, removes them when
// its checks stop and those a crashed run left at start. The realserver
// answers the director from the VIP, which a strict reverse-path filter on
// the front interface would drop: with rp_filter=1 DR and TUN targets are
// probed on their own addresses instead (logged), as TUN targets are with a
// dataplane that cannot encapsulate. NAT targets are probed through the
// inside network, which is their forwarding path.
//
// High availability (ha_wiring.go, connsync.go) wires server/ha in: on
// every node a lease Grantor, which grants only while this node leads a
// term whose barrier has completed (VerifyLeader checks the barrier's term,
// a quorum, and that the term has not moved), serving
// InternalService.GrantLease and ReleaseLease to the director named in the
// caller's certificate; and a Reassigner, which moves a lost owner's
// addresses once its lease has surely run out and performs MoveVip, and
// proposes on this node only, never forwarded. Memberlist joins and leaves
// are hints to it. A full director also runs, as its packet path's lease
// keeper, the ha Keeper (leases from the leader, gratuitous ARP on the front
// and inside interfaces, a fresh burst when a peer rejoins), the connection
// Batcher, fed by the dataplane's events and proposing through the leader,
// and the installer of replicated connections: the state machine's
// connection hook queues each change without blocking and one goroutine
// writes it into the dataplane, leaving alone the entries of addresses this
// director holds a lease on. The keeper takes a new address over only when
// the dataplane has reconciled the current configuration and installed every
// replicated connection. At shutdown a director releases its addresses
// first, so they move at once.
//
// In Insecure mode the API and the Raft transport run in plaintext and every
// caller is treated as a director (all rights, forwarding included): it
// exists for local experiments only.
package server
