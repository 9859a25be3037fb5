package dataplane

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/raftlb/raftlb/dataplane/maglev"
)

// Sentinel errors.
var (
	// ErrInvalid marks a configuration or state the dataplane refuses.
	ErrInvalid = errors.New("invalid")
	// ErrUnknownRealserver marks a connection whose service or realserver
	// is not (or no longer) configured here.
	ErrUnknownRealserver = errors.New("unknown service or realserver")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("dataplane closed")
	// ErrTableFull marks entries that did not fit the connection or
	// reverse-NAT table (both buckets a key may live in were full).
	ErrTableFull = errors.New("connection table full")
)

// AttachMode selects how XDP programs attach.
type AttachMode uint8

// Attach modes.
const (
	// AttachAuto uses generic XDP on veth (native XDP there needs a program
	// on the peer and loses partial checksums) and native elsewhere,
	// falling back to generic where the driver has no XDP support.
	AttachAuto AttachMode = iota
	AttachGeneric
	AttachNative
)

func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachGeneric:
		return "generic"
	case AttachNative:
		return "native"
	}
	return fmt.Sprintf("attach(%d)", uint8(m))
}

// ParseAttachMode parses "auto", "generic" or "native".
func ParseAttachMode(s string) (AttachMode, error) {
	for _, m := range []AttachMode{AttachAuto, AttachGeneric, AttachNative} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("parse attach mode %q: %w", s, ErrInvalid)
}

// Config configures Open. Zero fields take the defaults.
type Config struct {
	// FrontIface faces clients and DR/TUN realservers (required).
	FrontIface string
	// InsideIface faces NAT realservers; empty disables NAT.
	InsideIface string
	// AttachMode for the XDP programs; default auto.
	AttachMode AttachMode
	// ConnTableSize is the connection table's capacity; default 262144.
	// NAT connections take as many reverse entries, in a table of the
	// same size. Each holds a third more slots than its capacity (see
	// ctLoad), 56 bytes each.
	ConnTableSize int
	// PersistTableSize bounds the persistence (client affinity) table;
	// default 65536.
	PersistTableSize int
	// TableSize is the Maglev table size, a prime; default 65537.
	TableSize int
	// RingBufferSize in bytes, a power of two ≥ the page size; default 1 MiB.
	RingBufferSize int
	// SweepInterval is how often Run expires connections; default 1 s.
	SweepInterval time.Duration
	// NeighInterval is how often Run refreshes next-hop MACs and checks
	// the sysctls Open set; default 1 s.
	NeighInterval time.Duration
	// RefreshInterval caps how often a live connection is re-announced
	// (EventRefresh); each service uses at most a third of its shortest
	// timeout. Default 60 s.
	RefreshInterval time.Duration
	// KeepSysctls leaves the interfaces' sysctls alone (see the package doc).
	KeepSysctls bool
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.ConnTableSize == 0 {
		c.ConnTableSize = 1 << 18
	}
	if c.PersistTableSize == 0 {
		c.PersistTableSize = 1 << 16
	}
	if c.TableSize == 0 {
		c.TableSize = maglev.DefaultSize
	}
	if c.RingBufferSize == 0 {
		c.RingBufferSize = 1 << 20
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = time.Second
	}
	if c.NeighInterval == 0 {
		c.NeighInterval = time.Second
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first problem with the configuration.
func (c Config) Validate() error {
	if c.FrontIface == "" {
		return fmt.Errorf("validate config: front interface: %w", ErrInvalid)
	}
	if c.FrontIface == c.InsideIface {
		return fmt.Errorf("validate config: inside interface equals front interface: %w", ErrInvalid)
	}
	return c.validateSizes()
}

func (c Config) validateSizes() error {
	switch {
	case c.ConnTableSize < 0 || c.PersistTableSize < 0 || c.RingBufferSize < 0:
		return fmt.Errorf("validate config: negative size: %w", ErrInvalid)
	case c.TableSize != 0 && (!maglev.IsPrime(c.TableSize) || c.TableSize < 3):
		return fmt.Errorf("validate config: table size %d is not a prime: %w", c.TableSize, ErrInvalid)
	case c.RingBufferSize != 0 && c.RingBufferSize&(c.RingBufferSize-1) != 0:
		return fmt.Errorf("validate config: ring buffer size %d is not a power of two: %w", c.RingBufferSize, ErrInvalid)
	}
	return nil
}

// iface is an interface the programs run on.
type iface struct {
	index int
	name  string
	mac   net.HardwareAddr
	addr  netip.Addr // first IPv4 address, if any
	mtu   int
}

// Dataplane drives the director's BPF programs and maps. Its methods are
// safe for concurrent use.
type Dataplane struct {
	cfg   Config
	log   *slog.Logger
	objs  directorObjects
	inner *ebpf.MapSpec // template of the per-service tables
	clk   clock
	index *vipIndex
	// conns and rnat are the connection and reverse-NAT tables, mapped.
	conns, rnat *ctTable
	// crowded: either table was at least half full at the last sweep
	// (config.ct_crowded).
	crowded bool
	// grace and graceInner serve rcuSync.
	grace, graceInner *ebpf.Map
	tick              jiffyClock // how the programs read the time
	neigh             neighbours
	links             []link.Link

	front, inside iface

	mu     sync.Mutex
	closed bool
	st     applied
	// sysctls are the ones Open set (none with KeepSysctls), which Run
	// keeps set; sysctlRepairs counts how often it had to.
	sysctls       []*sysctl
	sysctlRepairs uint64

	// leaseMu guards what SetLease needs, apart from mu: a renewal must
	// never wait behind Apply or a sweep, or a healthy owner could let
	// its lease run out. Lock order: mu, then leaseMu.
	leaseMu     sync.Mutex
	leaseClosed bool
	leases      map[netip.Addr]uint64 // desired deadlines, CLOCK_MONOTONIC ns
	leaseIdx    map[netip.Addr]uint32 // lease slots of owned addresses (st.owned's)
}

// Open loads the programs, attaches them to the configured interfaces and
// sets the interfaces' sysctls. Nothing is forwarded until Apply and
// SetLease say so.
func Open(cfg Config) (*Dataplane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	front, err := lookupIface(nl, cfg.FrontIface)
	if err != nil {
		nl.Close()
		return nil, err
	}
	var inside iface
	if cfg.InsideIface != "" {
		if inside, err = lookupIface(nl, cfg.InsideIface); err != nil {
			nl.Close()
			return nil, err
		}
	}
	d, err := load(cfg, newKernelNeighbours(nl, front.index, cfg.Logger), front, inside)
	if err != nil {
		nl.Close()
		return nil, err
	}
	if !cfg.KeepSysctls {
		if d.sysctls, err = openSysctls(front.name, inside.name); err != nil {
			d.Close()
			return nil, err
		}
		if err := setSysctls(d.sysctls); err != nil {
			d.Close()
			return nil, err
		}
	}
	if err := d.attach(nl); err != nil {
		d.Close()
		return nil, err
	}
	d.log.Info("dataplane attached", "front", front.name, "inside", inside.name, "mode", cfg.AttachMode.String())
	return d, nil
}

func lookupIface(nl *netlink.Handle, name string) (iface, error) {
	l, err := nl.LinkByName(name)
	if err != nil {
		return iface{}, fmt.Errorf("look up interface %s: %w", name, err)
	}
	ifc := iface{index: l.Attrs().Index, name: name, mac: l.Attrs().HardwareAddr, mtu: l.Attrs().MTU}
	addrs, err := nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return iface{}, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			ifc.addr = ip
			break
		}
	}
	return ifc, nil
}

// load creates maps and programs and writes the interface configuration;
// it attaches nothing, so tests drive the programs with PROG_TEST_RUN.
func load(cfg Config, neigh neighbours, front, inside iface) (*Dataplane, error) {
	if err := cfg.validateSizes(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	spec, err := loadDirector()
	if err != nil {
		return nil, fmt.Errorf("load director spec: %w", err)
	}
	spec.Maps["conns"].MaxEntries = ctBuckets(cfg.ConnTableSize)
	spec.Maps["rnats"].MaxEntries = ctBuckets(cfg.ConnTableSize)
	spec.Maps["persist"].MaxEntries = uint32(cfg.PersistTableSize)
	spec.Maps["events"].MaxEntries = uint32(cfg.RingBufferSize)
	tables := spec.Maps["svc_tables"]
	tables.InnerMap.MaxEntries = uint32(cfg.TableSize)
	d := &Dataplane{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "dataplane"),
		inner:    tables.InnerMap.Copy(),
		neigh:    neigh,
		front:    front,
		inside:   inside,
		leases:   make(map[netip.Addr]uint64),
		leaseIdx: make(map[netip.Addr]uint32),
		st:       newApplied(),
	}
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load director programs: %w (verifier log tail: %v)", err, ve.Log[max(0, len(ve.Log)-5):])
		}
		return nil, fmt.Errorf("load director programs: %w", err)
	}
	// xdp_front hands everything but its fast path to xdp_front_full.
	if err := d.objs.FrontFull.Put(uint32(0), d.objs.XdpFrontFull); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("install xdp_front_full: %w", err)
	}
	d.index = &vipIndex{m: d.objs.VipIndex}
	if err := d.mapTables(); err != nil {
		d.objs.Close()
		return nil, err
	}
	if d.tick, err = calibrateJiffies(d.objs.ClockProbe, d.objs.ClockSamples); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.writeConfig(netip.Addr{}); err != nil {
		d.closeTables()
		d.objs.Close()
		return nil, err
	}
	return d, nil
}

// mapTables maps the connection and reverse-NAT tables into memory, with
// a fresh hash seed.
func (d *Dataplane) mapTables() error {
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("pick hash seed: %w", err)
	}
	s := binary.LittleEndian.Uint64(seed[:])
	var err error
	if d.conns, err = mapCT(d.objs.Conns, s); err != nil {
		return err
	}
	if d.rnat, err = mapCT(d.objs.Rnats, s); err != nil {
		d.conns.close()
		return err
	}
	// An update of a map-in-map returns only after an RCU grace period
	// (the kernel waits for running programs so that userspace knows the
	// old inner map is unused): rcuSync uses that to wait for programs.
	if d.graceInner, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}); err != nil {
		d.closeTables()
		return fmt.Errorf("create grace-period map: %w", err)
	}
	d.grace, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}})
	if err != nil {
		d.closeTables()
		return fmt.Errorf("create grace-period map: %w", err)
	}
	return nil
}

// rcuSync returns once every program run that began before the call has
// finished.
func (d *Dataplane) rcuSync() error {
	if err := d.grace.Put(uint32(0), d.graceInner); err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	return nil
}

func (d *Dataplane) closeTables() error {
	var errs []error
	for _, m := range []*ebpf.Map{d.grace, d.graceInner} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(append(errs, d.conns.close(), d.rnat.close())...)
}

func (d *Dataplane) writeConfig(frontAddr netip.Addr) error {
	c := directorConfig{
		FrontIfindex:  uint32(d.front.index),
		InsideIfindex: uint32(d.inside.index),
		FrontMtu:      uint32(d.front.mtu),
		TickNs:        d.tick.tickNs,
		ClockOff:      d.tick.off,
		WakeBytes:     uint64(d.cfg.RingBufferSize / 4),
		ConnBuckets:   uint32(len(d.conns.buckets)),
		RnatBuckets:   uint32(len(d.rnat.buckets)),
		CtSeed:        d.conns.seed,
	}
	if d.crowded {
		c.CtCrowded = 1
	}
	if c.FrontMtu == 0 {
		c.FrontMtu = 1500
	}
	if !frontAddr.IsValid() {
		frontAddr = d.front.addr
	}
	if frontAddr.Is4() {
		c.FrontAddr = be32(frontAddr)
	}
	if d.inside.addr.Is4() {
		c.InsideAddr = be32(d.inside.addr)
	}
	copy(c.FrontMac[:], d.front.mac)
	copy(c.InsideMac[:], d.inside.mac)
	if err := d.objs.Cfg.Put(uint32(0), c); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	return nil
}

func (d *Dataplane) attach(nl *netlink.Handle) error {
	type att struct {
		ifc  iface
		xdp  *ebpf.Program
		tcx  *ebpf.Program
		name string
	}
	atts := []att{{d.front, d.objs.XdpFront, d.objs.TcFront, "front"}}
	if d.inside.index != 0 {
		atts = append(atts, att{d.inside, d.objs.XdpInside, d.objs.TcInside, "inside"})
	}
	for _, a := range atts {
		l, err := d.attachXDP(nl, a.ifc, a.xdp)
		if err != nil {
			return err
		}
		d.links = append(d.links, l)
		tl, err := link.AttachTCX(link.TCXOptions{Interface: a.ifc.index, Program: a.tcx, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach tcx ingress to %s: %w", a.ifc.name, err)
		}
		d.links = append(d.links, tl)
	}
	// TUN health probes are the director's own packets: they leave through
	// egress, which neither XDP nor tcx ingress sees.
	el, err := link.AttachTCX(link.TCXOptions{Interface: d.front.index, Program: d.objs.TcFrontEgress, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		return fmt.Errorf("attach tcx egress to %s: %w", d.front.name, err)
	}
	d.links = append(d.links, el)
	return nil
}

func (d *Dataplane) attachXDP(nl *netlink.Handle, ifc iface, prog *ebpf.Program) (link.Link, error) {
	mode := d.cfg.AttachMode
	auto := mode == AttachAuto
	if auto {
		mode = AttachNative
		l, err := nl.LinkByIndex(ifc.index)
		if err != nil {
			return nil, fmt.Errorf("look up interface %s: %w", ifc.name, err)
		}
		if l.Type() == "veth" {
			mode = AttachGeneric
		}
	}
	flags := link.XDPDriverMode
	if mode == AttachGeneric {
		flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.index, Flags: flags})
	if err != nil && auto && mode == AttachNative {
		d.log.Warn("native XDP failed, using generic", "iface", ifc.name, "err", err)
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.index, Flags: link.XDPGenericMode})
	}
	if err != nil {
		return nil, fmt.Errorf("attach xdp (%s) to %s: %w", mode, ifc.name, err)
	}
	return l, nil
}

// Close detaches the programs and frees the maps. Owned addresses fall
// silent at once. The neighbour entries the dataplane set up are removed
// or given back (see kernelNeighbours); sysctls stay as they are.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	// No lease write may reach a map being closed.
	d.leaseMu.Lock()
	defer d.leaseMu.Unlock()
	d.leaseClosed = true
	var errs []error
	for _, l := range d.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	for _, m := range d.st.tables {
		m.Close()
	}
	if err := d.closeTables(); err != nil {
		errs = append(errs, fmt.Errorf("unmap tables: %w", err))
	}
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close objects: %w", err))
	}
	// Releases the neighbour entries this process set up.
	if c, ok := d.neigh.(interface{ close() }); ok {
		c.close()
	}
	if err := closeSysctls(d.sysctls); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
