// Package lab builds and tears down the raftlb lab: the whole cluster topology in
// network namespaces on one Linux host, used by `raftlb lab` for the demo and by the
// end-to-end tests of other packages.
//
// The topology is two L2 segments joined by bridges in a switch namespace:
//
//	<p>sw      br0 (front, 192.0.2.0/24)  br1 (inside, 203.0.113.0/24)
//	<p>client  eth0 192.0.2.100           —            (route 198.51.100.0/24 on-link)
//	<p>d1, d2  eth0 192.0.2.1, .2         eth1 203.0.113.1, .2    directors
//	<p>w1      eth0 192.0.2.3             eth1 203.0.113.3        witness
//	<p>rs1..3  eth0 192.0.2.11..13        eth1 203.0.113.11..13   realservers
//
// <p> is the lab's prefix (DefaultPrefix, "rlb-"); every prefix must start with "rlb" and
// every name the lab creates carries it, so labs with different prefixes run side by side.
// Veth pairs are created inside the switch namespace with their far end placed directly
// into the host namespace, so nothing is ever created in the root namespace. IPv6 is
// disabled in every lab namespace: the lab uses only the three documentation ranges above
// and loopback.
//
// The package owns the lab's state directory (DefaultDir for `raftlb lab`): pids/ holds
// one file per process started with Start (pid and start time, so a recycled pid is never
// signalled), logs/ their output, tls/ the certificates, data/ the directors' data
// directories, agent/ the realserver agents' state directories and gossip.key the
// memberlist key. Down works from that directory and from the namespaces alone, so it
// cleans up after a crashed `lab up` or test binary: it stops the recorded process
// groups, then anything else whose network namespace is one of the lab's (matched by
// /proc/<pid>/ns/net inode, never by name), then deletes the namespaces. Agents are only
// stopped: deleting a realserver's namespace removes everything they configured in it.
//
// Build makes the network only; Up builds it and starts the directors (StartDirector,
// DirectorArgs), the witness, the lab backend (RunBackend) and the realserver agents
// (StartAgent, AgentArgs) through the raftlb binary; Demo walks through the cluster on
// top of Up. Tests reach into the lab with Exec (a command in a namespace), InNS and
// DialContext (Go code and sockets in a namespace), CLI (the raftlb CLI from the client
// as admin), Signal (a recorded process, e.g. to kill a director or an agent) and
// Disconnect/Reconnect (a switch port, e.g. to partition a director).
//
// The lab shells out to ip(8): it is test tooling, and the commands it runs are the ones a
// reader would type to reproduce it. Product code configures the network via netlink.
package lab
