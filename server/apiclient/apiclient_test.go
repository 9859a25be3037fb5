package apiclient

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/raftlb/raftlb/server/pki"
)

func TestFromEnv(t *testing.T) {
	env := map[string]string{EnvServer: "192.0.2.1:9443", EnvCA: "ca.pem", EnvCert: "admin.pem", EnvKey: "admin-key.pem"}
	got := FromEnv(func(k string) string { return env[k] })
	want := Options{Server: "192.0.2.1:9443", CA: "ca.pem", Cert: "admin.pem", Key: "admin-key.pem"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("FromEnv (-want +got):\n%s", diff)
	}
}

func TestDialRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	if _, err := Dial(ctx, Options{Server: "127.0.0.1:1"}); !errors.Is(err, ErrMissingTLS) {
		t.Errorf("no certificates: got %v, want ErrMissingTLS", err)
	}
	if _, err := Dial(ctx, Options{Server: "no-port", Insecure: true}); err == nil {
		t.Error("address without port: got no error")
	}
	if _, err := Dial(ctx, Options{Server: "127.0.0.1:1", CA: "/nonexistent/ca.pem", Cert: "c", Key: "k"}); err == nil {
		t.Error("missing CA file: got no error")
	}
}

// TestDialTLS connects with mutual TLS to a server that requires client certificates,
// and fails to connect with a certificate from another CA.
func TestDialTLS(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, other} {
		if err := pki.Init(d, pki.InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	stls, err := pki.ServerTLS(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "director.pem"), filepath.Join(dir, "director-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(stls)))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := Options{Server: ln.Addr().String(), CA: filepath.Join(dir, "ca.pem"),
		Cert: filepath.Join(dir, "admin.pem"), Key: filepath.Join(dir, "admin-key.pem"), WaitReady: true}
	cc, err := Dial(ctx, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer cc.Close()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("call over mTLS: %v", err)
	}

	// A client whose certificate another CA signed never gets a ready connection.
	bad := opts
	bad.Cert, bad.Key = filepath.Join(other, "admin.pem"), filepath.Join(other, "admin-key.pem")
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	if cc, err := Dial(short, bad); err == nil {
		cc.Close()
		t.Error("dial with a foreign client certificate: got a ready connection")
	}
}
