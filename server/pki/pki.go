package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Role is what a certificate's holder may do.
type Role string

// The roles, carried in the certificate's Organizational Unit.
const (
	RoleDirector Role = "director"
	RoleAdmin    Role = "admin"
	RoleReader   Role = "reader"
	RoleAgent    Role = "agent"
)

// Errors returned when a peer cannot be identified.
var (
	ErrNoCertificate = errors.New("no verified client certificate")
	ErrUnknownRole   = errors.New("certificate carries no known role")
)

// Identity is who is calling, from a verified client certificate.
type Identity struct {
	Role Role
	// Name is the certificate's Common Name: a director id, an agent's realserver id, a user.
	Name string
	// IPs are the certificate's IP SANs.
	IPs []net.IP
}

// IdentityFromCert reads the role and name from a verified certificate.
func IdentityFromCert(c *x509.Certificate) (Identity, error) {
	for _, ou := range c.Subject.OrganizationalUnit {
		switch r := Role(ou); r {
		case RoleDirector, RoleAdmin, RoleReader, RoleAgent:
			return Identity{Role: r, Name: c.Subject.CommonName, IPs: c.IPAddresses}, nil
		}
	}
	return Identity{}, fmt.Errorf("identify %q: %w", c.Subject.CommonName, ErrUnknownRole)
}

// IdentityFromContext identifies the gRPC peer of ctx.
func IdentityFromContext(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, ErrNoCertificate
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoCertificate
	}
	return IdentityFromCert(ti.State.VerifiedChains[0][0])
}

// ServerTLS is the configuration of a TLS server that requires and verifies
// client certificates from the CA.
func ServerTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, cert, err := load(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ClientTLS is the configuration of a TLS client presenting its certificate
// and trusting only the CA.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, cert, err := load(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

func load(caFile, certFile, keyFile string) (*x509.CertPool, tls.Certificate, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("read ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, tls.Certificate{}, fmt.Errorf("read ca %s: no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("load key pair: %w", err)
	}
	return pool, cert, nil
}

// InitOptions says what Init issues.
type InitOptions struct {
	// IPs and DNSNames are added to every certificate's SANs, on top of the lab
	// addresses, 127.0.0.1 and localhost.
	IPs      []net.IP
	DNSNames []string
	// Directors get one certificate each (CN = id) besides the shared "director" one.
	Directors []string
	// Agents get one certificate each, CN = realserver id.
	Agents []AgentCert
	// Validity of the issued certificates; zero means one year.
	Validity time.Duration
}

// AgentCert names an agent and the addresses it may register.
type AgentCert struct {
	ID  string
	IPs []net.IP
}

// LabIPs are the lab's front and inside addresses, so dev certificates work there.
func LabIPs() []net.IP {
	var ips []net.IP
	for _, last := range []byte{1, 2, 3, 11, 12, 13, 100} {
		ips = append(ips, net.IPv4(192, 0, 2, last), net.IPv4(203, 0, 113, last))
	}
	return append(ips, net.IPv4(127, 0, 0, 1))
}

// Init writes a development CA (ca.pem, ca-key.pem) and certificates into dir:
// director.pem, admin.pem, reader.pem, and director-<id>.pem and
// agent-<id>.pem for the named ones, each with its -key.pem. Existing files
// are overwritten.
func Init(dir string, o InitOptions) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	validity := o.Validity
	if validity == 0 {
		validity = 365 * 24 * time.Hour
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate ca key: %w", err)
	}
	now := time.Now().Add(-time.Minute)
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "raftlb dev CA", Organization: []string{"raftlb"}},
		NotBefore:             now,
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("create ca: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("parse ca: %w", err)
	}
	if err := writePair(dir, "ca", caDER, caKey); err != nil {
		return err
	}
	ips := append(LabIPs(), o.IPs...)
	dns := append([]string{"localhost"}, o.DNSNames...)
	issue := func(file, cn string, role Role, ips []net.IP) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("generate key %s: %w", file, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: []string{string(role)}, Organization: []string{"raftlb"}},
			NotBefore:    now,
			NotAfter:     now.Add(validity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses:  ips,
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("create certificate %s: %w", file, err)
		}
		return writePair(dir, file, der, key)
	}
	for _, c := range []struct {
		file, cn string
		role     Role
	}{
		{"director", "director", RoleDirector},
		{"admin", "admin", RoleAdmin},
		{"reader", "reader", RoleReader},
	} {
		if err := issue(c.file, c.cn, c.role, ips); err != nil {
			return err
		}
	}
	for _, id := range o.Directors {
		if err := issue("director-"+id, id, RoleDirector, ips); err != nil {
			return err
		}
	}
	for _, a := range o.Agents {
		if err := issue("agent-"+a.ID, a.ID, RoleAgent, append(append([]net.IP{}, a.IPs...), net.IPv4(127, 0, 0, 1))); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(fmt.Errorf("read random serial: %w", err))
	}
	return n
}

func writePair(dir, name string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key %s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("write %s.pem: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("write %s-key.pem: %w", name, err)
	}
	return nil
}
