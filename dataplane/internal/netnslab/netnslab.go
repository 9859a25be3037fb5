// Package netnslab builds the dataplane's end-to-end test topology in
// network namespaces: a switch namespace with a front and an inside
// bridge, and hosts attached to them. Test-only: it shells out to ip(8)
// and ethtool(8).
package netnslab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/raftlb/raftlb/deploy/lab"
)

// Lab is a set of namespaces whose names start with a prefix.
type Lab struct {
	t      testing.TB
	Prefix string
	hosts  []string
}

// New creates the switch namespace with bridges br0 (front) and br1
// (inside) and removes every namespace of the lab in t.Cleanup. The
// prefix must start with "rlb".
func New(t testing.TB, prefix string) *Lab {
	t.Helper()
	if !strings.HasPrefix(prefix, "rlb") {
		t.Fatalf("lab prefix %q must start with rlb", prefix)
	}
	l := &Lab{t: t, Prefix: prefix}
	t.Cleanup(l.destroy)
	l.addNS("sw")
	for _, br := range []string{"br0", "br1"} {
		l.IP("sw", "link", "add", br, "type", "bridge")
		l.IP("sw", "link", "set", br, "up")
	}
	return l
}

// NS is the full name of a lab namespace.
func (l *Lab) NS(name string) string { return l.Prefix + "-" + name }

func (l *Lab) addNS(name string) {
	l.t.Helper()
	l.Run("ip", "netns", "add", l.NS(name))
	l.hosts = append(l.hosts, name)
	l.IP(name, "link", "set", "lo", "up")
}

func (l *Lab) destroy() {
	for _, h := range l.hosts {
		// Best effort: the namespace may be half built.
		_ = netns.DeleteNamed(l.NS(h))
	}
}

// Host adds a namespace with eth0 on the front bridge and, when inside is
// non-empty, eth1 on the inside bridge. Addresses are CIDR strings.
func (l *Lab) Host(name, front, inside string) {
	l.t.Helper()
	l.addNS(name)
	l.attach(name, "eth0", "br0", "f", front)
	if inside != "" {
		l.attach(name, "eth1", "br1", "i", inside)
	}
}

// SwitchPort is the switch-side interface of a host's link.
func (l *Lab) SwitchPort(host, dev string) string {
	side := "f"
	if dev == "eth1" {
		side = "i"
	}
	return host + side
}

func (l *Lab) attach(host, dev, br, side, addr string) {
	l.t.Helper()
	port := host + side
	l.IP("sw", "link", "add", port, "type", "veth", "peer", "name", dev, "netns", l.NS(host))
	l.IP("sw", "link", "set", port, "master", br, "up")
	l.IP(host, "addr", "add", addr, "dev", dev)
	l.IP(host, "link", "set", dev, "up")
}

// IP runs ip(8) in a lab namespace.
func (l *Lab) IP(ns string, args ...string) string {
	l.t.Helper()
	return l.Run(append([]string{"ip", "-n", l.NS(ns)}, args...)...)
}

// Exec runs a command inside a lab namespace.
func (l *Lab) Exec(ns string, args ...string) string {
	l.t.Helper()
	var out string
	if err := l.Do(ns, func() error { out = l.Run(args...); return nil }); err != nil {
		l.t.Fatal(err)
	}
	return out
}

// Sysctl sets a sysctl (dotted name) inside a lab namespace.
func (l *Lab) Sysctl(ns, key, val string) {
	l.t.Helper()
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := l.Do(ns, func() error { return os.WriteFile(p, []byte(val), 0o644) }); err != nil {
		l.t.Fatalf("set %s in %s: %v", p, l.NS(ns), err)
	}
}

// Run runs a command and fails the test if it fails.
func (l *Lab) Run(args ...string) string {
	l.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs fn on an OS thread inside the namespace; sockets and netlink
// handles fn creates stay in that namespace.
func (l *Lab) Do(ns string, fn func() error) error {
	return lab.InNamespace(l.NS(ns), fn)
}
