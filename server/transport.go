package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftlb/raftlb/server/pki"
)

// ErrNotDirector is returned when a Raft peer's certificate lacks the director role.
var ErrNotDirector = errors.New("peer certificate is not a director's")

// streamLayer is the Raft transport's listener and dialer. With TLS both ends
// present director certificates and each checks the other's role, so only
// directors can join the replication stream.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	server    *tls.Config // nil in insecure mode
	client    *tls.Config
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(l net.Listener, advertise string, server, client *tls.Config) (*streamLayer, error) {
	addr, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return nil, fmt.Errorf("resolve raft address: %w", err)
	}
	s := &streamLayer{Listener: l, advertise: addr}
	if server != nil {
		s.server = server.Clone()
		s.server.VerifyConnection = requireDirector
		s.client = client.Clone()
		s.client.VerifyConnection = requireDirector
	}
	return s, nil
}

// requireDirector runs after chain verification on both sides of a Raft connection.
func requireDirector(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("verify raft peer: %w", pki.ErrNoCertificate)
	}
	return checkDirectorCert(cs.PeerCertificates[0])
}

func checkDirectorCert(c *x509.Certificate) error {
	id, err := pki.IdentityFromCert(c)
	if err != nil {
		return fmt.Errorf("verify raft peer: %w", err)
	}
	if id.Role != pki.RoleDirector {
		return fmt.Errorf("verify raft peer %q (%s): %w", id.Name, id.Role, ErrNotDirector)
	}
	return nil
}

// Accept hands Raft a connection whose handshake runs on first use, so a slow
// or hostile peer cannot stall the accept loop.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if s.server == nil {
		return c, nil
	}
	return tls.Server(c, s.server), nil
}

// Addr is the advertised address, which Raft stores in its configuration.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a peer and completes the handshake within timeout.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if s.client == nil {
		return d.Dial("tcp", string(address))
	}
	cfg := s.client.Clone()
	if host, _, err := net.SplitHostPort(string(address)); err == nil {
		cfg.ServerName = host
	}
	c, err := tls.DialWithDialer(d, "tcp", string(address), cfg)
	if err != nil {
		return nil, fmt.Errorf("dial raft peer %s: %w", address, err)
	}
	return c, nil
}
