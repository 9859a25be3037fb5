package lab

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNewChecksPrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		ok     bool
	}{
		{"rlb-", true},
		{"rlbt1-", true},
		{"rlb", true},
		{"", false},
		{"sw", false},
		{"RLB-", false},
		{"rlb/../", false},
		{"rlb-" + string(make([]byte, 40)), false},
	} {
		_, err := New(tc.prefix, t.TempDir(), nil)
		if tc.ok != (err == nil) {
			t.Errorf("New(%q) = %v, want ok=%v", tc.prefix, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadPrefix) {
			t.Errorf("New(%q) = %v, want ErrBadPrefix", tc.prefix, err)
		}
	}
}

func TestTopology(t *testing.T) {
	l, err := New("rlb-", "/run/raftlb-lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.NS("d1"); got != "rlb-d1" {
		t.Errorf("NS(d1) = %q", got)
	}
	seen := map[netip.Addr]string{}
	for _, h := range Hosts() {
		for _, a := range []netip.Addr{h.Front, h.Inside} {
			if !a.IsValid() {
				continue
			}
			if !FrontNet.Contains(a) && !InsideNet.Contains(a) {
				t.Errorf("%s: %s outside the lab ranges", h.Name, a)
			}
			if other, dup := seen[a]; dup {
				t.Errorf("%s and %s share %s", h.Name, other, a)
			}
			seen[a] = h.Name
		}
	}
	for _, lk := range links() {
		if len(lk.SwitchPort) > 15 {
			t.Errorf("switch port %q is longer than IFNAMSIZ-1", lk.SwitchPort)
		}
	}
	if got, want := MAC(netip.MustParseAddr("192.0.2.100")), "02:00:c0:00:02:64"; got != want {
		t.Errorf("MAC = %s, want %s", got, want)
	}
}

func TestDirectorArgs(t *testing.T) {
	l, err := New("rlb-", "/run/raftlb-lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.DirectorArgs("d2")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"director", "--id", "d2",
		"--data-dir", "/run/raftlb-lab/data/d2",
		"--api-addr", "192.0.2.2:9443",
		"--raft-addr", "203.0.113.2:9444",
		"--gossip-addr", "203.0.113.2:9445",
		"--metrics-addr", "192.0.2.2:9446",
		"--peers", "d1=203.0.113.1:9444,d2=203.0.113.2:9444,w1=203.0.113.3:9444",
		"--tls-ca", "/run/raftlb-lab/tls/ca.pem",
		"--tls-cert", "/run/raftlb-lab/tls/director-d2.pem",
		"--tls-key", "/run/raftlb-lab/tls/director-d2-key.pem",
		"--gossip-key-file", "/run/raftlb-lab/gossip.key",
		"--lease-duration", LeaseDuration.String(),
		"--iface", "eth0", "--inside-iface", "eth1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DirectorArgs(d2) (-want +got):\n%s", diff)
	}
	w, err := l.DirectorArgs("w1")
	if err != nil {
		t.Fatal(err)
	}
	if last := w[len(w)-1]; last != "--witness" {
		t.Errorf("witness args end with %q, want --witness", last)
	}
	if _, err := l.DirectorArgs("rs1"); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("DirectorArgs(rs1) = %v, want ErrUnknownHost", err)
	}
}

func TestEnv(t *testing.T) {
	for _, tc := range []struct{ dir, want string }{
		{"/run/raftlb-lab", "export RAFTLB_SERVER=192.0.2.1:9443 RAFTLB_CA=/run/raftlb-lab/tls/ca.pem " +
			"RAFTLB_CERT=/run/raftlb-lab/tls/admin.pem RAFTLB_KEY=/run/raftlb-lab/tls/admin-key.pem\n"},
		{"/tmp/a b", "export RAFTLB_SERVER=192.0.2.1:9443 RAFTLB_CA='/tmp/a b/tls/ca.pem' " +
			"RAFTLB_CERT='/tmp/a b/tls/admin.pem' RAFTLB_KEY='/tmp/a b/tls/admin-key.pem'\n"},
	} {
		l, err := New("rlb-", tc.dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, l.Env()); diff != "" {
			t.Errorf("Env() (-want +got):\n%s", diff)
		}
	}
}

func TestPidFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pid")
	want := pidRecord{Pid: 1234, Start: 987654, Host: "rs1"}
	if err := writePidFile(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := readPidFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pid file round trip (-want +got):\n%s", diff)
	}
	if err := os.WriteFile(path, []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readPidFile(path); err == nil {
		t.Error("readPidFile accepted garbage")
	}
}

func TestReadStatSelf(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.pid != os.Getpid() || st.start == 0 || st.zombie {
		t.Errorf("readStat(self) = %+v", st)
	}
}

func TestTLSInitArgs(t *testing.T) {
	want := []string{"tls", "init", "--dir", "/x/tls",
		"--director", "d1", "--director", "d2", "--director", "w1",
		"--agent", "rs1=192.0.2.11,203.0.113.11", "--agent", "rs2=192.0.2.12,203.0.113.12",
		"--agent", "rs3=192.0.2.13,203.0.113.13"}
	if diff := cmp.Diff(want, TLSInitArgs("/x/tls")); diff != "" {
		t.Errorf("TLSInitArgs (-want +got):\n%s", diff)
	}
}
