// Package e2e holds end-to-end tests and lab benchmarks that drive the real raftlb
// binary in the netns lab (deploy/lab) the way a user would: directors, realserver
// agents and backends in their namespaces, the CLI from the client namespace, and the
// realservers' kernels read back with ip(8), tc(8) and /proc/sys. It has no code of its
// own outside its tests.
//
// The tests need root (they build network namespaces) and skip without it. TestMain
// builds cmd/raftlb once; every test brings up its own lab under a prefix that starts
// with "rlbag", so the tests run side by side with each other and with other packages'
// labs.
package e2e
