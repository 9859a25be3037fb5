package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	rlblab "github.com/raftlb/raftlb/deploy/lab"
)

// Lab addresses and MACs. The client reaches the VIP through the
// director's front; NAT realservers sit behind its inside interface.
var (
	clientMAC   = mac("02:00:00:00:00:0c")
	dirFrontMAC = mac("02:00:00:00:00:0d")
	dirInMAC    = mac("02:00:00:00:01:0d")
)

const (
	clientAddr   = "192.0.2.10"
	dirFrontAddr = "192.0.2.20"
	dirInAddr    = "203.0.113.1"
	vipAddr      = "198.51.100.100"
	vipPort      = 9000
	nReals       = 3
)

func realFront(i int) string               { return fmt.Sprintf("192.0.2.%d", 31+i) }
func realInside(i int) string              { return fmt.Sprintf("203.0.113.%d", 31+i) }
func realFrontMAC(i int) net.HardwareAddr  { return mac(fmt.Sprintf("02:00:00:00:00:%02x", 0x31+i)) }
func realInsideMAC(i int) net.HardwareAddr { return mac(fmt.Sprintf("02:00:00:00:01:%02x", 0x31+i)) }

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err) // constants only
	}
	return m
}

// lab is the set of namespaces one run creates: sw (two bridges), c
// (client), d (director), r0..r2 (realservers).
type lab struct {
	prefix string
	made   []string
}

func (l *lab) ns(name string) string { return l.prefix + "-" + name }

func run(args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("run %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func (l *lab) ip(ns string, args ...string) error {
	return run(append([]string{"ip", "-n", l.ns(ns)}, args...)...)
}

// exec runs a tool inside namespace ns.
func (l *lab) exec(ns string, args ...string) error {
	return l.do(ns, func() error { return run(args...) })
}

// sysctl sets /proc/sys/<key> as namespace ns sees it.
func (l *lab) sysctl(ns, key, val string) error {
	return l.do(ns, func() error {
		p := filepath.Join("/proc/sys", key)
		if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
			return fmt.Errorf("set %s in %s: %w", p, l.ns(ns), err)
		}
		return nil
	})
}

func (l *lab) addNS(name string) error {
	if err := run("ip", "netns", "add", l.ns(name)); err != nil {
		return err
	}
	l.made = append(l.made, name)
	return l.ip(name, "link", "set", "lo", "up")
}

// link connects host's dev (with mac and addr/24) to bridge br in sw.
func (l *lab) link(host, dev, br string, hw net.HardwareAddr, addr string) error {
	port := host + dev
	steps := [][]string{
		{"sw", "link", "add", port, "type", "veth", "peer", "name", dev, "netns", l.ns(host)},
		{"sw", "link", "set", port, "master", br, "up"},
		{host, "link", "set", dev, "address", hw.String()},
		{host, "addr", "add", addr + "/24", "dev", dev},
		{host, "link", "set", dev, "up"},
	}
	for _, s := range steps {
		if err := l.ip(s[0], s[1:]...); err != nil {
			return err
		}
	}
	// A static forwarding entry: the realservers only sink, so the bridge
	// would never learn their MACs and would flood every packet to every
	// port once the learned entries aged out.
	return run("bridge", "-n", l.ns("sw"), "fdb", "replace", hw.String(), "dev", port, "master", "static")
}

func (l *lab) up() error {
	if err := l.addNS("sw"); err != nil {
		return err
	}
	// With br_netfilter loaded, a bridge hands every IPv4 frame it
	// forwards to the namespace's netfilter hooks; a switch does not.
	if _, err := os.Stat("/proc/sys/net/bridge"); err == nil {
		for _, k := range []string{"iptables", "ip6tables", "arptables"} {
			if err := l.sysctl("sw", "net/bridge/bridge-nf-call-"+k, "0"); err != nil {
				return err
			}
		}
	}
	for _, br := range []string{"br0", "br1"} {
		if err := l.ip("sw", "link", "add", br, "type", "bridge"); err != nil {
			return err
		}
		if err := l.ip("sw", "link", "set", br, "up"); err != nil {
			return err
		}
	}
	for _, h := range []string{"c", "d"} {
		if err := l.addNS(h); err != nil {
			return err
		}
	}
	if err := l.link("c", "eth0", "br0", clientMAC, clientAddr); err != nil {
		return err
	}
	if err := l.link("d", "eth0", "br0", dirFrontMAC, dirFrontAddr); err != nil {
		return err
	}
	if err := l.link("d", "eth1", "br1", dirInMAC, dirInAddr); err != nil {
		return err
	}
	for i := range nReals {
		r := fmt.Sprintf("r%d", i)
		if err := l.addNS(r); err != nil {
			return err
		}
		if err := l.link(r, "eth0", "br0", realFrontMAC(i), realFront(i)); err != nil {
			return err
		}
		if err := l.link(r, "eth1", "br1", realInsideMAC(i), realInside(i)); err != nil {
			return err
		}
		// Static neighbours: no ARP during a measurement.
		if err := l.ip("d", "neigh", "replace", realFront(i), "lladdr", realFrontMAC(i).String(), "dev", "eth0", "nud", "permanent"); err != nil {
			return err
		}
		if err := l.ip("d", "neigh", "replace", realInside(i), "lladdr", realInsideMAC(i).String(), "dev", "eth1", "nud", "permanent"); err != nil {
			return err
		}
	}
	// The nftables paths route; the raftlb and XDP paths never reach the
	// IP layer, so these settings do not help them.
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/eth0/rp_filter", "0"}, {"net/ipv4/conf/eth1/rp_filter", "0"},
	} {
		if err := l.sysctl("d", kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

func (l *lab) down() {
	for i := len(l.made) - 1; i >= 0; i-- {
		// Best effort: the namespace may be half built.
		_ = run("ip", "netns", "del", l.ns(l.made[i]))
	}
	l.made = nil
}

// do runs fn on an OS thread inside namespace name; links and sockets fn
// creates stay bound to that namespace, and processes it starts are born
// there.
func (l *lab) do(name string, fn func() error) error {
	return rlblab.InNamespace(l.ns(name), fn)
}
