package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// TestAgentUsageErrors: mistakes in the agent's flags are named before it touches the
// kernel or the network, every one at once.
func TestAgentUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want []string
	}{
		{"nothing", []string{"agent", "--insecure", "--state-dir", t.TempDir()},
			nil, []string{"id: required", "directors: at least one required", "facing-ifaces: at least one required"}},
		{"bad values", []string{"agent", "--insecure", "--id", "rs1", "--directors", "192.0.2.1", "--iface", "lo", "--nat-table", "254", "--state-dir", t.TempDir()},
			nil, []string{`directors[0]: "192.0.2.1" is not host:port`, `facing-ifaces[0]: "lo" is not an interface name`, "nat-table: 254 is reserved"}},
		{"no certificates", []string{"agent", "--id", "rs1", "--directors", "192.0.2.1:9443", "--iface", "eth0"},
			nil, []string{"--tls-ca, --tls-cert and --tls-key"}},
		{"directors from the environment", []string{"agent", "--insecure", "--iface", "eth0", "--state-dir", t.TempDir()},
			[]string{EnvDirectors + "=192.0.2.1:9443, 192.0.2.2"}, []string{"id: required", `directors[1]: "192.0.2.2" is not host:port`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.env, tc.args...)
			if r.code != 2 {
				t.Errorf("exit code %d, want 2; stderr: %s", r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q does not mention %q", r.stderr, w)
				}
			}
		})
	}
}

// TestAgentCleanupNothing: --cleanup with nothing recorded succeeds and changes nothing.
func TestAgentCleanupNothing(t *testing.T) {
	t.Parallel()
	if r := run(t, nil, "agent", "--cleanup", "--state-dir", t.TempDir()); r.code != 0 {
		t.Errorf("agent --cleanup on an empty state dir: code %d: %s", r.code, r.stderr)
	}
}

// TestSystemdAgentUnit: the unit's command line parses. With the example environment
// filled in it gets as far as reading the certificates, which do not exist here.
func TestSystemdAgentUnit(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", "raftlb-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(b), "\\\n", " ")
	m := regexp.MustCompile(`(?m)^ExecStart=(\S+) (.*)$`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatal("no ExecStart in the unit")
	}
	env := map[string]string{"RAFTLB_AGENT_ID": "rs1", "RAFTLB_DIRECTORS": "192.0.2.1:9443,192.0.2.2:9443", "RAFTLB_AGENT_IFACE": "eth0"}
	args := strings.Fields(os.Expand(m[2], func(k string) string { return env[k] }))
	r := run(t, nil, args...)
	if r.code != 1 || !strings.Contains(r.stderr, "/etc/raftlb/") {
		t.Errorf("raftlb %s: code %d, stderr %q; want the certificates missing (status 1), not a usage error",
			strings.Join(args, " "), r.code, r.stderr)
	}
}

func TestPrintRealserverAgents(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	agents := []*raftlbv1.AgentInfo{
		{Id: "rs1", AppliedGeneration: 7, LastSeenUnixMs: now.UnixMilli() - 1500,
			Interfaces: []*raftlbv1.Interface{{Name: "eth0", Addresses: []string{"192.0.2.11/24"}}, {Name: "eth1", Addresses: []string{"203.0.113.11/24"}}},
			Vips:       []*raftlbv1.VipResult{{Vip: "198.51.100.10", Applied: true}}},
		{Id: "rs2", AppliedGeneration: 6, LastSeenUnixMs: now.UnixMilli() - 200, Error: "add address\nsecond line",
			Interfaces: []*raftlbv1.Interface{{Name: "eth0", Addresses: []string{"192.0.2.12"}}},
			Vips:       []*raftlbv1.VipResult{{Vip: "198.51.100.10", Error: "file exists"}}},
	}
	rss := []*raftlbv1.Realserver{
		{Address: "192.0.2.11", Weight: 1, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR},
		{Address: "192.0.2.12", Weight: 1, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN},
		{Address: "192.0.2.13", Weight: 1, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR},
		{Address: "203.0.113.11", Weight: 1, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT},
	}
	var buf bytes.Buffer
	if err := printRealserverAgents(&buf, "198.51.100.10", rss, agents, now); err != nil {
		t.Fatal(err)
	}
	want := `REALSERVER    PORT  WEIGHT  METHOD  ADMIN  HEALTH  ACTIVE  CONNECTIONS  AGENT  APPLIED  AGENT STATE         LAST SEEN
192.0.2.11    -     1       dr      -      -       0       0            rs1    7        applied             1.5s ago
192.0.2.12    -     1       tun     -      -       0       0            rs2    6        error: file exists  200ms ago
192.0.2.13    -     1       dr      -      -       0       0            -      -        no agent            -
203.0.113.11  -     1       nat     -      -       0       0            rs1    7        applied             1.5s ago
`
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("realserver table (-want +got):\n%s", diff)
	}

	buf.Reset()
	if err := printAgents(&buf, agents, now); err != nil {
		t.Fatal(err)
	}
	want = `AGENT  ADDRESSES                      APPLIED  DECAP  VIP            RESULT              LAST SEEN  ERROR
rs1    192.0.2.11/24,203.0.113.11/24  7        -      198.51.100.10  applied             1.5s ago   -
rs2    192.0.2.12                     6        -      198.51.100.10  error: file exists  200ms ago  add address; second line
`
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("agent table (-want +got):\n%s", diff)
	}
}
