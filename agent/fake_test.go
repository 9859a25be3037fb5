package agent

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// fakeKernel is an in-memory Kernel that behaves like the real one where the
// reconciler can tell: adds of existing objects fail, deletes of absent ones
// do not, per-interface sysctls come and go with their interface.
type fakeKernel struct {
	mu        sync.Mutex
	st        kernelState
	ipip      bool
	failWrite map[string]error
	writes    []string
}

// kernelState is what a snapshot compares.
type kernelState struct {
	Links   map[string]Link
	Sysctls map[string]string
	Routes  []Route
	Rules   []Rule
}

func newFakeKernel() *fakeKernel {
	k := &fakeKernel{st: kernelState{Links: map[string]Link{}, Sysctls: map[string]string{}}, failWrite: map[string]error{}}
	k.addLink("lo", 65536)
	k.addLink("eth0", 1500)
	k.addLink("eth1", 1500)
	for _, n := range []string{"all", "default"} {
		k.addSysctls(n)
	}
	lo, eth0, eth1 := k.st.Links["lo"], k.st.Links["eth0"], k.st.Links["eth1"]
	lo.Addrs = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}
	k.st.Links["lo"] = lo
	eth0.Addrs = []netip.Prefix{netip.MustParsePrefix("192.0.2.11/24")}
	eth1.Addrs = []netip.Prefix{netip.MustParsePrefix("203.0.113.11/24")}
	k.st.Links["eth0"], k.st.Links["eth1"] = eth0, eth1
	k.st.Routes = []Route{
		{Table: MainTable, Dst: netip.MustParsePrefix("192.0.2.0/24"), LinkIndex: eth0.Index},
		{Table: MainTable, Dst: netip.MustParsePrefix("203.0.113.0/24"), LinkIndex: eth1.Index},
		{Table: MainTable, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("192.0.2.254"), LinkIndex: eth0.Index},
	}
	return k
}

func (k *fakeKernel) addLink(name string, mtu int) {
	k.st.Links[name] = Link{Name: name, Index: len(k.st.Links) + 1, MTU: mtu, Up: true, MAC: fmt.Sprintf("02:00:00:00:00:%02x", len(k.st.Links)+1)}
	k.addSysctls(name)
}

func (k *fakeKernel) addSysctls(name string) {
	for _, s := range []string{"arp_ignore", "arp_announce", "rp_filter"} {
		k.st.Sysctls["net/ipv4/conf/"+name+"/"+s] = "0"
	}
	k.st.Sysctls["net/ipv4/conf/"+name+"/rp_filter"] = "1"
}

// snapshot deep-copies the kernel state for cmp.Diff.
func (k *fakeKernel) snapshot() kernelState {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := kernelState{Links: map[string]Link{}, Sysctls: maps.Clone(k.st.Sysctls), Routes: slices.Clone(k.st.Routes), Rules: slices.Clone(k.st.Rules)}
	for n, l := range k.st.Links {
		l.Addrs = slices.Clone(l.Addrs)
		s.Links[n] = l
	}
	return s
}

func (k *fakeKernel) takeWrites() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	w := k.writes
	k.writes = nil
	return w
}

func (k *fakeKernel) write(op string) error {
	k.writes = append(k.writes, op)
	for prefix, err := range k.failWrite {
		if strings.HasPrefix(op, prefix) {
			return err
		}
	}
	return nil
}

func (k *fakeKernel) Links() ([]Link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []Link
	for _, l := range k.st.Links {
		l.Addrs = slices.Clone(l.Addrs)
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Link) int { return a.Index - b.Index })
	return out, nil
}

func (k *fakeKernel) LinkByName(name string) (Link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.st.Links[name]
	if !ok {
		return Link{}, fmt.Errorf("find link %s: %w", name, ErrNotFound)
	}
	l.Addrs = slices.Clone(l.Addrs)
	return l, nil
}

func (k *fakeKernel) AddAddr(link string, p netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("addr add " + p.String() + " " + link); err != nil {
		return err
	}
	l, ok := k.st.Links[link]
	if !ok {
		return fmt.Errorf("find link %s: %w", link, ErrNotFound)
	}
	if slices.Contains(l.Addrs, p) {
		return errors.New("file exists")
	}
	l.Addrs = append(l.Addrs, p)
	k.st.Links[link] = l
	return nil
}

func (k *fakeKernel) DelAddr(link string, p netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("addr del " + p.String() + " " + link); err != nil {
		return err
	}
	if l, ok := k.st.Links[link]; ok {
		l.Addrs = slices.DeleteFunc(l.Addrs, func(a netip.Prefix) bool { return a == p })
		k.st.Links[link] = l
	}
	return nil
}

func (k *fakeKernel) Routes(table int) ([]Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []Route
	for _, r := range k.st.Routes {
		if r.Table == table {
			out = append(out, r)
		}
	}
	return out, nil
}

func (k *fakeKernel) ReplaceRoute(r Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("route replace " + r.String()); err != nil {
		return err
	}
	if r.LinkIndex == 0 {
		// The kernel picks the device whose on-link route covers the gateway.
		for _, m := range k.st.Routes {
			if m.Table == MainTable && !m.Gw.IsValid() && m.Dst.Contains(r.Gw) {
				r.LinkIndex = m.LinkIndex
			}
		}
		if r.LinkIndex == 0 {
			return fmt.Errorf("replace route %s: network unreachable", r)
		}
	}
	k.st.Routes = slices.DeleteFunc(k.st.Routes, func(x Route) bool { return x.key() == r.key() })
	k.st.Routes = append(k.st.Routes, r)
	return nil
}

func (k *fakeKernel) DelRoute(r Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("route del " + r.String()); err != nil {
		return err
	}
	k.st.Routes = slices.DeleteFunc(k.st.Routes, func(x Route) bool { return x.key() == r.key() })
	return nil
}

func (k *fakeKernel) Rules() ([]Rule, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.st.Rules), nil
}

func (k *fakeKernel) AddRule(r Rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("rule add " + r.String()); err != nil {
		return err
	}
	if slices.Contains(k.st.Rules, r) {
		return errors.New("file exists")
	}
	k.st.Rules = append(k.st.Rules, r)
	return nil
}

func (k *fakeKernel) DelRule(r Rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("rule del " + r.String()); err != nil {
		return err
	}
	if i := slices.Index(k.st.Rules, r); i >= 0 {
		k.st.Rules = slices.Delete(k.st.Rules, i, i+1)
	}
	return nil
}

func (k *fakeKernel) Sysctl(name string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.st.Sysctls[name]
	if !ok {
		return "", fmt.Errorf("read sysctl %s: %w", name, ErrNotFound)
	}
	return v, nil
}

func (k *fakeKernel) SetSysctl(name, value string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("sysctl " + name + "=" + value); err != nil {
		return err
	}
	if _, ok := k.st.Sysctls[name]; !ok {
		return fmt.Errorf("write sysctl %s: %w", name, ErrNotFound)
	}
	k.st.Sysctls[name] = value
	return nil
}

func (k *fakeKernel) AddIPIPTunnel(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("link add " + name); err != nil {
		return err
	}
	if !k.ipip {
		return fmt.Errorf("add ipip link %s: %w", name, ErrNotSupported)
	}
	if _, ok := k.st.Links[name]; ok {
		return errors.New("file exists")
	}
	k.addLink(name, 1480)
	return nil
}

func (k *fakeKernel) SetLinkUp(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("link up " + name); err != nil {
		return err
	}
	l, ok := k.st.Links[name]
	if !ok {
		return fmt.Errorf("find link %s: %w", name, ErrNotFound)
	}
	l.Up = true
	k.st.Links[name] = l
	return nil
}

func (k *fakeKernel) DelLink(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("link del " + name); err != nil {
		return err
	}
	delete(k.st.Links, name)
	for s := range k.st.Sysctls {
		if strings.HasPrefix(s, "net/ipv4/conf/"+name+"/") {
			delete(k.st.Sysctls, s)
		}
	}
	return nil
}

// fakeDecapper records where it is attached.
type fakeDecapper struct {
	mu       sync.Mutex
	attached map[string][]netip.Addr
	fail     error
}

func newFakeDecapper() *fakeDecapper { return &fakeDecapper{attached: map[string][]netip.Addr{}} }

func (d *fakeDecapper) Mode() string { return DecapModeBPF }

func (d *fakeDecapper) Attach(iface string, sources []netip.Addr) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return false, d.fail
	}
	d.attached[iface] = slices.Clone(sources)
	return false, nil
}

func (d *fakeDecapper) Detach(iface string, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.attached, iface)
	return nil
}

func (d *fakeDecapper) snapshot() map[string][]netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.attached)
}
