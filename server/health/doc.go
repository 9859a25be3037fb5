// Package health probes realservers and decides when each one is up or down.
//
// Every full director runs a Checker over every realserver of every service,
// whether or not it owns the VIP, so a standby that takes a VIP over already
// has fresh verdicts. This package only observes: it reports transitions
// through Options.OnChange, and the director replicates them through Raft as
// HealthVerdicts; the replicated verdict, not this package's view, steers
// traffic.
//
// # Model
//
// A Target is one realserver of one service (the same host in two services
// is two targets, because each service may check it differently). A Check is
// how it is probed: none, a TCP connect, or an HTTP(S) GET whose status must
// equal ExpectedStatus. Zero fields take GLB-like defaults: every 2 s, 1 s
// timeout, up after 2 consecutive passes, down after 3 consecutive failures,
// path "/", status 200. A target starts Unknown and leaves it on whichever
// comes first, Rise passes or Fall failures. OnChange fires only on a
// transition. CheckNone targets are up at once and never probed.
//
// # Goroutines
//
// Run owns everything: one goroutine per probed target, each with its own
// context, started, stopped and restarted as Update changes the set, and all
// stopped and waited for before Run returns. Update never blocks; Run reads
// only the latest set. The state map is written by Run's goroutine alone, and
// OnChange is called from it, in order. Each target's first probe waits a
// delay hashed from the target (below one interval), so targets added
// together do not probe in lockstep.
//
// # HTTP
//
// Each HTTP(S) target gets its own client and transport: no proxy from the
// environment, no keep-alives (every probe proves a new connection), the
// check's timeout on the whole exchange, no redirects followed, and at most a
// few KiB of the body read. HTTPS does not verify the realserver's
// certificate: realservers hold certificates for the service's name, not for
// their own addresses, and the check is about liveness, not identity.
//
// # The forwarding-path seam
//
// Every connection a probe makes goes through the Dialer interface. The
// default, DirectDialer, connects to the realserver's own address, which
// proves the service answers but not that forwarded traffic arrives: a DR or
// TUN realserver must also accept packets for the VIP (VIP on lo, ARP
// sysctls, decapsulation), and a broken agent leaves it answering on its own
// address while dropping every balanced connection. A director that wants to
// prove the whole path plugs in a Dialer that, for MethodDR and MethodTUN
// targets, connects to the VIP and has the dataplane steer those marked
// packets to exactly this realserver by the target's method, as Seesaw does
// with marked health-check packets; Target carries the service key and method
// for that purpose (the director's does so for DR and TUN targets with policy
// routing of marked probe sockets, TUN ones encapsulated by the dataplane; see
// package server). NAT targets are reached
// directly through the inside network either way.
package health
