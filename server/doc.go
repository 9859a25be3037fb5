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
// In Insecure mode the API and the Raft transport run in plaintext and every
// caller is treated as a director (all rights, forwarding included): it
// exists for local experiments only.
package server
