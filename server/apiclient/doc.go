// Package apiclient dials a director's gRPC API the way every raftlb client does:
// mutual TLS with a certificate whose Organizational Unit carries the caller's role,
// or plaintext only when asked for explicitly. The CLI, the realserver agent and the
// end-to-end tests share it so they cannot drift apart on transport security.
package apiclient
