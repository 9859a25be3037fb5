// Package pki makes and loads the certificates raftlb speaks mutual TLS with.
//
// A certificate's Organizational Unit carries its role (director, admin,
// reader, agent) and its Common Name the identity: a director's id or an
// agent's realserver id. An agent certificate's IP SANs bound the addresses
// that agent may register. Init writes a development CA and one certificate
// per role; production deployments bring their own CA and follow the same
// OU/CN convention.
package pki
