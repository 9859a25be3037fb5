package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftlb/raftlb/server/pki"
)

// ErrNotDirector is returned when a Raft peer's certificate lacks the director role.
var ErrNotDirector = errors.New("peer certificate is not a director's")

// handshakeTimeout bounds a Raft peer's TLS handshake, so a silent or hostile
// client cannot hold a connection open unauthenticated.
const handshakeTimeout = 5 * time.Second

// streamLayer is the Raft transport's listener and dialer. With TLS both ends
// present director certificates and each checks the other's role, so only
// directors can join the replication stream. Incoming handshakes complete
// (with a deadline) before Raft sees the connection.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config // nil in insecure mode
	client    *tls.Config
	log       *slog.Logger

	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// newStreamLayer starts accepting on l; Close stops it.
func newStreamLayer(l net.Listener, advertise string, server, client *tls.Config, log *slog.Logger) (*streamLayer, error) {
	addr, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return nil, fmt.Errorf("resolve raft address: %w", err)
	}
	s := &streamLayer{
		ln: l, advertise: addr, log: log,
		conns: make(chan net.Conn), closed: make(chan struct{}),
	}
	if server != nil {
		s.server = server.Clone()
		s.server.VerifyConnection = requireDirector
		s.client = client.Clone()
		s.client.VerifyConnection = requireDirector
	}
	go s.acceptLoop()
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

// acceptLoop runs until the listener is closed.
func (s *streamLayer) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept raft connection", "err", err)
			select {
			case <-s.closed:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		go s.handshake(c)
	}
}

func (s *streamLayer) handshake(c net.Conn) {
	if s.server == nil {
		s.deliver(c)
		return
	}
	tc := tls.Server(c, s.server)
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout)) // A failure shows up in Handshake.
	if err := tc.Handshake(); err != nil {
		s.log.Warn("refused raft peer", "addr", c.RemoteAddr().String(), "err", err)
		_ = c.Close() // Refused; nothing more to say to it.
		return
	}
	_ = c.SetDeadline(time.Time{}) // Raft sets its own deadlines per RPC.
	s.deliver(tc)
}

func (s *streamLayer) deliver(c net.Conn) {
	select {
	case s.conns <- c:
	case <-s.closed:
		_ = c.Close() // Shutting down.
	}
}

// Accept returns the next authenticated connection.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; Raft's transport calls it on shutdown.
func (s *streamLayer) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.closeErr = s.ln.Close()
	})
	return s.closeErr
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
