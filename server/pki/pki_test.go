package pki

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
)

func TestInitIssuesRoles(t *testing.T) {
	dir := t.TempDir()
	err := Init(dir, InitOptions{Agents: []AgentCert{{ID: "rs1", IPs: []net.IP{net.IPv4(192, 0, 2, 11)}}}})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	for _, tc := range []struct {
		file string
		want Identity
	}{
		{"director", Identity{Role: RoleDirector, Name: "director"}},
		{"admin", Identity{Role: RoleAdmin, Name: "admin"}},
		{"reader", Identity{Role: RoleReader, Name: "reader"}},
		{"agent-rs1", Identity{Role: RoleAgent, Name: "rs1"}},
	} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, tc.file+".pem"), filepath.Join(dir, tc.file+"-key.pem"))
		if err != nil {
			t.Fatalf("load %s: %v", tc.file, err)
		}
		id, err := IdentityFromCert(pair.Leaf)
		if err != nil {
			t.Fatalf("identify %s: %v", tc.file, err)
		}
		if id.Role != tc.want.Role || id.Name != tc.want.Name {
			t.Errorf("%s: identity = %s/%s, want %s/%s", tc.file, id.Role, id.Name, tc.want.Role, tc.want.Name)
		}
	}
	if _, err := ServerTLS(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "director.pem"), filepath.Join(dir, "director-key.pem")); err != nil {
		t.Errorf("ServerTLS: %v", err)
	}
	if _, err := ClientTLS(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.pem"), filepath.Join(dir, "nope.pem")); err == nil {
		t.Errorf("ClientTLS with a missing key: want error")
	}
}
