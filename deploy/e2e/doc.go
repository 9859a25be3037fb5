// Package e2e holds end-to-end tests and lab benchmarks that drive the real raftlb
// binary in the netns lab (deploy/lab) the way a user would: directors, realserver
// agents and backends in their namespaces, the CLI from the client namespace, and the
// realservers' kernels read back with ip(8), tc(8) and /proc/sys. It has no code of its
// own outside its tests.
//
// The tests need root (they build network namespaces) and skip without it. TestMain
// builds cmd/raftlb once; every test brings up its own lab under a prefix of its own
// that starts with "rlb" ("rlbag…" for the agent tests, "rlbhc-" for the health checks),
// so the tests run side by side with each other and with other packages' labs.
//
// Traffic goes through the directors' dataplanes: TestAgentTraffic sends HTTP, a
// megabyte of echo and long-lived echo streams through a DR, a TUN and a NAT service
// and checks the connection table (`raftlb conns list|flush`); TestHealthChecks stops
// and restarts a realserver's backend and breaks its forwarding path, and checks the
// replicated verdicts, where new connections go, and /metrics.
package e2e
