package server

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/fsm"
	"github.com/raftlb/raftlb/server/ha"
	"github.com/raftlb/raftlb/server/pki"
)

func TestToStatus(t *testing.T) {
	tests := []struct {
		err  error
		want codes.Code
	}{
		{&fsm.Error{Code: codes.InvalidArgument, Field: "service.key.vip", Reason: "bad"}, codes.InvalidArgument},
		{fmt.Errorf("wrapped: %w", &fsm.Error{Code: codes.NotFound, Reason: "gone"}), codes.NotFound},
		{fmt.Errorf("apply: %w", raft.ErrNotLeader), codes.Unavailable},
		{ErrNoLeader, codes.Unavailable},
		{fmt.Errorf("apply: %w", ErrOutcomeUnknown), codes.Unavailable},
		{notImplemented("move vip", "HA"), codes.Unimplemented},
		{fmt.Errorf("call: %w", ErrPermissionDenied), codes.PermissionDenied},
		{fmt.Errorf("identify: %w", pki.ErrNoCertificate), codes.Unauthenticated},
		{status.Error(codes.ResourceExhausted, "from the leader"), codes.ResourceExhausted},
		{fmt.Errorf("grant: %w", ha.ErrNotLeader), codes.Unavailable},
		{fmt.Errorf("move: %w", ha.ErrUnknownAddress), codes.NotFound},
		{fmt.Errorf("move: %w", ha.ErrNoTarget), codes.FailedPrecondition},
		{errors.New("surprise"), codes.Internal},
	}
	for _, tc := range tests {
		if got := status.Code(toStatus(tc.err)); got != tc.want {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if toStatus(nil) != nil {
		t.Errorf("toStatus(nil) != nil")
	}
	if !isNotLeader(toStatus(ErrNotLeader)) {
		t.Errorf("ErrNotLeader does not carry NOT_LEADER")
	}
	if isNotLeader(toStatus(ErrNoLeader)) {
		t.Errorf("ErrNoLeader carries NOT_LEADER; a write could be retried twice")
	}
}

func TestAuthorize(t *testing.T) {
	agent := pki.Identity{Role: pki.RoleAgent, Name: "rs1", IPs: []net.IP{net.IPv4(192, 0, 2, 11)}}
	reader := pki.Identity{Role: pki.RoleReader, Name: "reader"}
	admin := pki.Identity{Role: pki.RoleAdmin, Name: "admin"}
	director := pki.Identity{Role: pki.RoleDirector, Name: "d1"}
	reg := func(id string, addrs ...string) *raftlbv1.RegisterRequest {
		return &raftlbv1.RegisterRequest{Id: id, Interfaces: []*raftlbv1.Interface{{Name: "eth0", Addresses: addrs}}}
	}
	tests := []struct {
		name   string
		id     pki.Identity
		method string
		req    any
		ok     bool
	}{
		{"admin writes", admin, raftlbv1.LoadBalancerService_CreateService_FullMethodName, nil, true},
		{"admin not internal", admin, raftlbv1.InternalService_Apply_FullMethodName, nil, false},
		{"director internal", director, raftlbv1.InternalService_Apply_FullMethodName, nil, true},
		{"admin no other internal", admin, "/raftlb.v1.InternalService/Anything", nil, false},
		{"agent not internal", agent, raftlbv1.InternalService_Apply_FullMethodName, &raftlbv1.ApplyRequest{}, false},
		{"reader reads", reader, raftlbv1.LoadBalancerService_WatchServices_FullMethodName, nil, true},
		{"reader status", reader, raftlbv1.ClusterService_GetStatus_FullMethodName, nil, true},
		{"reader agents", reader, raftlbv1.AgentService_ListAgents_FullMethodName, nil, true},
		{"reader no write", reader, raftlbv1.ClusterService_SetAddress_FullMethodName, nil, false},
		{"reader no register", reader, raftlbv1.AgentService_Register_FullMethodName, nil, false},
		{"agent own register", agent, raftlbv1.AgentService_Register_FullMethodName, reg("rs1", "192.0.2.11/24"), true},
		{"agent bare address", agent, raftlbv1.AgentService_Register_FullMethodName, reg("rs1", "192.0.2.11"), true},
		{"agent foreign address", agent, raftlbv1.AgentService_Register_FullMethodName, reg("rs1", "192.0.2.12/24"), false},
		{"agent garbage address", agent, raftlbv1.AgentService_Register_FullMethodName, reg("rs1", "nope"), false},
		{"agent other id", agent, raftlbv1.AgentService_ReportStatus_FullMethodName, &raftlbv1.ReportStatusRequest{Id: "rs2"}, false},
		{"agent own watch", agent, raftlbv1.AgentService_WatchConfig_FullMethodName, &raftlbv1.WatchConfigRequest{Id: "rs1"}, true},
		{"agent no list", agent, raftlbv1.AgentService_ListAgents_FullMethodName, nil, false},
		{"agent no services", agent, raftlbv1.LoadBalancerService_ListServices_FullMethodName, nil, false},
		{"unknown method", admin, "/raftlb.v1.Nope/Nope", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := authorize(tc.id, tc.method, tc.req)
			if (err == nil) != tc.ok {
				t.Errorf("authorize = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrPermissionDenied) {
				t.Errorf("error %v is not ErrPermissionDenied", err)
			}
		})
	}
	// Every RPC of every service has a row: a new RPC must be placed deliberately.
	for _, sd := range []struct {
		name    string
		methods int
	}{
		{raftlbv1.LoadBalancerService_ServiceDesc.ServiceName, len(raftlbv1.LoadBalancerService_ServiceDesc.Methods) + len(raftlbv1.LoadBalancerService_ServiceDesc.Streams)},
		{raftlbv1.ClusterService_ServiceDesc.ServiceName, len(raftlbv1.ClusterService_ServiceDesc.Methods)},
		{raftlbv1.AgentService_ServiceDesc.ServiceName, len(raftlbv1.AgentService_ServiceDesc.Methods) + len(raftlbv1.AgentService_ServiceDesc.Streams)},
		{raftlbv1.ConnectionService_ServiceDesc.ServiceName, len(raftlbv1.ConnectionService_ServiceDesc.Methods)},
	} {
		n := 0
		for m := range methodRoles {
			if strings.HasPrefix(m, "/"+sd.name+"/") {
				n++
			}
		}
		if n != sd.methods {
			t.Errorf("%s: %d methods in the table, service has %d", sd.name, n, sd.methods)
		}
	}
}

func TestReadGossipKey(t *testing.T) {
	dir := t.TempDir()
	raw := []byte("0123456789abcdef")
	tests := []struct {
		name    string
		content []byte
		want    []byte
	}{
		{"raw 16", raw, raw},
		{"base64 32", []byte(base64.StdEncoding.EncodeToString(append(raw, raw...)) + "\n"), append(raw, raw...)},
		{"short", []byte("short"), nil},
		{"base64 of 9", []byte(base64.StdEncoding.EncodeToString(raw[:9])), nil},
	}
	for _, tc := range tests {
		p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
		if err := os.WriteFile(p, tc.content, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadGossipKey(p)
		if tc.want == nil {
			if !errors.Is(err, ErrGossipKey) {
				t.Errorf("%s: err = %v, want ErrGossipKey", tc.name, err)
			}
			continue
		}
		if err != nil || string(got) != string(tc.want) {
			t.Errorf("%s: got %q, %v", tc.name, got, err)
		}
	}
	p := filepath.Join(dir, "generated")
	if err := WriteGossipKey(p); err != nil {
		t.Fatal(err)
	}
	if k, err := ReadGossipKey(p); err != nil || len(k) != 32 {
		t.Errorf("generated key: %d bytes, %v", len(k), err)
	}
}

func TestAdvertised(t *testing.T) {
	bound := &net.TCPAddr{IP: net.IPv4zero, Port: 4242}
	tests := []struct{ configured, fallback, want string }{
		{"192.0.2.1:9443", "", "192.0.2.1:9443"},
		{"127.0.0.1:0", "", "127.0.0.1:4242"},
		{":9443", "203.0.113.1:9444", "203.0.113.1:9443"},
		{"0.0.0.0:0", "203.0.113.1:9444", "203.0.113.1:4242"},
	}
	for _, tc := range tests {
		if got := advertised(tc.configured, bound, tc.fallback); got != tc.want {
			t.Errorf("advertised(%q, %q) = %q, want %q", tc.configured, tc.fallback, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := Config{ID: "d1", DataDir: "/tmp/x", RaftAddr: "192.0.2.1:9444", TLSCA: "ca", TLSCert: "c", TLSKey: "k", GossipKeyFile: "g"}
		c.Defaults()
		return c
	}
	if err := func() error { c := base(); return c.Validate() }(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	tests := []struct {
		name  string
		mut   func(*Config)
		field string
	}{
		{"raft on all interfaces", func(c *Config) { c.RaftAddr = "0.0.0.0:9444" }, "raft-addr"},
		{"no gossip key", func(c *Config) { c.GossipKeyFile = "" }, "gossip-key-file"},
		{"bad gossip peer", func(c *Config) { c.GossipPeers = []string{"nope"} }, "gossip-peers"},
		{"bad front address", func(c *Config) { c.FrontAddr = "::1" }, "front-addr"},
		{"tiny write timeout", func(c *Config) { c.WriteTimeout = time.Millisecond }, "write-timeout"},
		{"lease above heartbeat", func(c *Config) { c.LeaderLeaseTimeout = time.Second }, "leader-lease-timeout"},
	}
	for _, tc := range tests {
		c := base()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: Validate = %v, want an error naming %s", tc.name, err, tc.field)
		}
	}
	c := base()
	c.Insecure, c.TLSCA, c.TLSCert, c.TLSKey, c.GossipKeyFile = true, "", "", "", ""
	if err := c.Validate(); err != nil {
		t.Errorf("insecure without tls and key: %v", err)
	}
}
