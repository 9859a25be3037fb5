// Package failover holds the end-to-end tests and lab benchmarks of raftlb's high
// availability: a VIP owner killed (SIGKILL), stalled (SIGSTOP), cut off from the other
// voters while clients still reach it, shut down (SIGTERM) or asked to hand a VIP over
// (`raftlb vip move`), with long-lived TCP streams and new connections running through
// DR, TUN and NAT services. They assert what a client sees: its ARP entry for the VIP
// moves to the new owner, no stream breaks or loses a byte, new connections succeed,
// and at no instant do two directors answer ARP for a VIP.
//
// The tests need root (the lab builds network namespaces) and skip without it. TestMain
// builds cmd/raftlb once; the tests share one lab under the prefix "rlbfo-", the
// benchmarks bring up their own ("rlbfb-"). It has no code outside its tests.
package failover
