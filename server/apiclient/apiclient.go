package apiclient

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/raftlb/raftlb/server/pki"
)

// Environment variables the CLI reads its connection settings from; flags override them.
const (
	EnvServer = "RAFTLB_SERVER"
	EnvCA     = "RAFTLB_CA"
	EnvCert   = "RAFTLB_CERT"
	EnvKey    = "RAFTLB_KEY"
)

// DefaultServer is the API address used when none is given.
const DefaultServer = "127.0.0.1:9443"

// ErrMissingTLS: a secure connection needs a CA, a certificate and its key.
var ErrMissingTLS = errors.New("ca, cert and key are required unless insecure")

// Options says where and how to connect.
type Options struct {
	// Server is the director's API address, host:port.
	Server string
	// CA, Cert and Key are PEM files: the CA that signed the directors' certificates,
	// and this client's certificate and key.
	CA, Cert, Key string
	// Insecure connects in plaintext without certificates. Only for a director started
	// with --insecure.
	Insecure bool
	// WaitReady makes Dial return only once the connection is up (or ctx ends), so a
	// long-lived client learns about a wrong address or certificate at once.
	WaitReady bool
}

// FromEnv returns Options filled from the RAFTLB_* variables, read with getenv.
func FromEnv(getenv func(string) string) Options {
	return Options{
		Server: getenv(EnvServer),
		CA:     getenv(EnvCA),
		Cert:   getenv(EnvCert),
		Key:    getenv(EnvKey),
	}
}

// Dial returns a client connection to o.Server. Without WaitReady it only checks and
// loads the settings; the connection is made by the first call.
func Dial(ctx context.Context, o Options) (*grpc.ClientConn, error) {
	server := o.Server
	if server == "" {
		server = DefaultServer
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		return nil, fmt.Errorf("dial %q: %w", server, err)
	}
	var creds credentials.TransportCredentials
	if o.Insecure {
		creds = insecure.NewCredentials()
	} else {
		if o.CA == "" || o.Cert == "" || o.Key == "" {
			return nil, fmt.Errorf("dial %s: %w", server, ErrMissingTLS)
		}
		cfg, err := pki.ClientTLS(o.CA, o.Cert, o.Key)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", server, err)
		}
		creds = credentials.NewTLS(cfg)
	}
	// passthrough: the address is used as given, never resolved into several backends,
	// so a client talks to exactly the director it names.
	conn, err := grpc.NewClient("passthrough:///"+server, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", server, err)
	}
	if o.WaitReady {
		if err := waitReady(ctx, conn); err != nil {
			conn.Close()
			return nil, fmt.Errorf("dial %s: %w", server, err)
		}
	}
	return conn, nil
}

// waitReady blocks until conn is Ready or ctx ends.
func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready {
			return nil
		}
		if !conn.WaitForStateChange(ctx, s) {
			return fmt.Errorf("wait for connection (last state %s): %w", s, ctx.Err())
		}
	}
}
