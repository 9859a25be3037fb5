package dataplane

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raftlb/raftlb/dataplane/internal/netnslab"
)

// syncBuffer is a log sink safe for Run's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// readSysctl reads a sysctl (dotted name) inside a lab namespace.
func readSysctl(t *testing.T, lab *netnslab.Lab, ns, key string) string {
	t.Helper()
	var v []byte
	err := lab.Do(ns, func() (err error) {
		v, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	})
	if err != nil {
		t.Fatalf("read %s in %s: %v", key, ns, err)
	}
	return strings.TrimSpace(string(v))
}

// TestSysctlRepair: Run sets back the sysctls Open set when someone
// changes them, warns naming the sysctl and the interface, and counts it;
// with KeepSysctls it leaves them alone.
func TestSysctlRepair(t *testing.T) {
	lab := newLab(t, "sc")
	lab.Host("d", "192.0.2.1/24", "203.0.113.1/24")
	lab.Host("k", "192.0.2.2/24", "203.0.113.2/24")
	// ip_forward turns every interface's forwarding on.
	lab.Sysctl("d", "net.ipv4.ip_forward", "1")
	lab.Sysctl("k", "net.ipv4.ip_forward", "1")
	const (
		fwd0   = "net.ipv4.conf.eth0.forwarding"
		fwd1   = "net.ipv4.conf.eth1.forwarding"
		redir1 = "net.ipv4.conf.eth1.send_redirects"
	)

	var logs syncBuffer
	d, _ := labDataplane(t, lab, "d", Config{
		FrontIface:    "eth0",
		InsideIface:   "eth1",
		NeighInterval: 20 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(&logs, nil)),
	})
	for _, key := range []string{fwd0, fwd1, redir1} {
		if v := readSysctl(t, lab, "d", key); v != "0" {
			t.Errorf("after Open: %s = %s, want 0", key, v)
		}
	}
	// settled waits until every key reads 0 and the counter reads want.
	settled := func(what string, want uint64, keys ...string) {
		t.Helper()
		eventually(t, what, func() (bool, string) {
			st, err := d.Stats()
			if err != nil {
				t.Fatalf("stats: %v", err)
			}
			state := []string{fmt.Sprintf("repairs=%d", st.SysctlRepairs)}
			ok := st.SysctlRepairs == want
			for _, key := range keys {
				v := readSysctl(t, lab, "d", key)
				state = append(state, key+"="+v)
				ok = ok && v == "0"
			}
			return ok, strings.Join(state, " ")
		})
	}
	settled("nothing repaired after Open", 0)

	lab.Sysctl("d", fwd0, "1")
	settled("front forwarding restored", 1, fwd0)
	if l := logs.String(); !strings.Contains(l, "level=WARN") ||
		!strings.Contains(l, "sysctl="+fwd0) || !strings.Contains(l, "iface=eth0") {
		t.Errorf("no warning naming %s and eth0 in the log:\n%s", fwd0, l)
	}

	lab.Sysctl("d", redir1, "1")
	// What a router daemon or a container runtime does: ip_forward turns
	// both interfaces' forwarding on (when it changes).
	lab.Sysctl("d", "net.ipv4.ip_forward", "0")
	lab.Sysctl("d", "net.ipv4.ip_forward", "1")
	settled("inside sysctls and forwarding restored", 4, fwd0, fwd1, redir1)
	if l := logs.String(); !strings.Contains(l, "sysctl="+redir1) || !strings.Contains(l, "iface=eth1") {
		t.Errorf("no warning naming %s and eth1 in the log:\n%s", redir1, l)
	}

	t.Run("KeepSysctls", func(t *testing.T) {
		k, _ := labDataplane(t, lab, "k", Config{FrontIface: "eth0", InsideIface: "eth1", KeepSysctls: true})
		// Run's step itself, so that no wait is needed to see it did nothing.
		if err := k.housekeep(); err != nil {
			t.Fatalf("housekeep: %v", err)
		}
		for _, key := range []string{fwd0, fwd1} {
			if v := readSysctl(t, lab, "k", key); v != "1" {
				t.Errorf("%s = %s, want 1 (left alone)", key, v)
			}
		}
		if st, err := k.Stats(); err != nil || st.SysctlRepairs != 0 {
			t.Errorf("stats: repairs %d, err %v; want 0, nil", st.SysctlRepairs, err)
		}
	})
}
