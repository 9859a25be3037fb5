package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// maxConnTableSize bounds --conn-table-size: 64M connections take ~9 GiB.
const maxConnTableSize = 1 << 26

// Config is everything a director (or witness) needs to run. Zero values are
// filled in by Defaults; flags override a YAML file.
type Config struct {
	// ID names this director in Raft and memberlist; it must be unique.
	ID string `yaml:"id"`
	// Witness makes this node a Raft voter that never owns addresses and has no dataplane.
	Witness bool `yaml:"witness"`
	// DataDir holds the Raft log, stable store and snapshots.
	DataDir string `yaml:"data_dir"`

	// APIAddr is where the gRPC API listens (host:port).
	APIAddr string `yaml:"api_addr"`
	// RaftAddr is where the Raft transport listens and what peers dial.
	RaftAddr string `yaml:"raft_addr"`
	// GossipAddr is where memberlist listens.
	GossipAddr string `yaml:"gossip_addr"`
	// MetricsAddr serves Prometheus /metrics; empty disables it.
	MetricsAddr string `yaml:"metrics_addr"`

	// Peers maps every initial voter's id to its Raft address, this node included.
	// Every node started with the same Peers bootstraps the same cluster once.
	Peers map[string]string `yaml:"peers"`
	// GossipPeers are memberlist addresses to join; empty means each peer's Raft host
	// on the gossip port.
	GossipPeers []string `yaml:"gossip_peers"`

	// TLSCA, TLSCert and TLSKey are PEM files for mutual TLS on the API and Raft.
	TLSCA   string `yaml:"tls_ca"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// Insecure serves the API in plaintext without client certificates. Never in production.
	Insecure bool `yaml:"insecure"`
	// GossipKeyFile holds the memberlist encryption key (16, 24 or 32 bytes, raw or base64).
	GossipKeyFile string `yaml:"gossip_key_file"`

	// Iface is the front interface (clients, DR and TUN realservers).
	Iface string `yaml:"iface"`
	// FrontAddr is this director's IPv4 address on Iface, the outer source of
	// TUN packets that agents must accept; empty means Iface's first IPv4 address.
	FrontAddr string `yaml:"front_addr"`
	// InsideIface is the NAT side (NAT realservers and the gateway address).
	InsideIface string `yaml:"inside_iface"`
	// AttachMode is how XDP attaches: auto (generic on veth, native elsewhere), generic or native.
	AttachMode string `yaml:"attach_mode"`
	// ConnTableSize is how many connections the dataplane's table holds
	// (NAT ones take as many reverse entries); 0 means 262144.
	ConnTableSize int `yaml:"conn_table_size"`

	// Raft timing; see shared HA timing notes. Defaults suit a LAN.
	HeartbeatTimeout   time.Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    time.Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout time.Duration `yaml:"leader_lease_timeout"`
	CommitTimeout      time.Duration `yaml:"commit_timeout"`
	// SnapshotThreshold is the number of log entries between snapshots.
	SnapshotThreshold uint64 `yaml:"snapshot_threshold"`
	// SnapshotInterval is how often Raft checks whether SnapshotThreshold
	// entries have accumulated (with some jitter).
	SnapshotInterval time.Duration `yaml:"snapshot_interval"`
	// WriteTimeout bounds how long a request waits for a leader and for its
	// entry to commit (and how long a consistent read waits for the leader).
	WriteTimeout time.Duration `yaml:"write_timeout"`

	// LeaseDuration is how long a granted address lease lets the dataplane answer.
	LeaseDuration time.Duration `yaml:"lease_duration"`
	// GARPCount and GARPInterval shape the gratuitous ARP burst on takeover.
	GARPCount    int           `yaml:"garp_count"`
	GARPInterval time.Duration `yaml:"garp_interval"`
	// GARPRefresh is the period of the refresh while the lease is valid; zero disables it.
	GARPRefresh time.Duration `yaml:"garp_refresh"`

	// AgentTimeout is how long a realserver's agent may go without reporting
	// before the realserver counts as down (only realservers with an agent).
	AgentTimeout time.Duration `yaml:"agent_timeout"`
}

// Default ports, as in the design.
const (
	DefaultAPIPort     = 9443
	DefaultRaftPort    = 9444
	DefaultGossipPort  = 9445
	DefaultMetricsPort = 9446
)

// Defaults fills every unset field with its default.
func (c *Config) Defaults() {
	if c.APIAddr == "" {
		c.APIAddr = fmt.Sprintf(":%d", DefaultAPIPort)
	}
	if c.RaftAddr == "" {
		c.RaftAddr = fmt.Sprintf("127.0.0.1:%d", DefaultRaftPort)
	}
	if c.GossipAddr == "" {
		host, _, err := net.SplitHostPort(c.RaftAddr)
		if err == nil {
			c.GossipAddr = net.JoinHostPort(host, fmt.Sprint(DefaultGossipPort))
		}
	}
	if c.AttachMode == "" {
		c.AttachMode = "auto"
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = 250 * time.Millisecond
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = 250 * time.Millisecond
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = 150 * time.Millisecond
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = 5 * time.Millisecond
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 120 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 1500 * time.Millisecond
	}
	if c.GARPCount == 0 {
		c.GARPCount = 5
	}
	if c.GARPInterval == 0 {
		c.GARPInterval = 200 * time.Millisecond
	}
	if c.GARPRefresh == 0 {
		c.GARPRefresh = 10 * time.Second
	}
	if c.AgentTimeout == 0 {
		c.AgentTimeout = 30 * time.Second
	}
}

// LoadConfigFile reads a YAML config; flags are applied on top by the caller.
func LoadConfigFile(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("parse config %s: %w", path, err)
	}
	return c, nil
}

// ParsePeers parses "id=host:port,id=host:port".
func ParsePeers(s string) (map[string]string, error) {
	peers := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return peers, nil
	}
	for _, p := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("peers: %q is not id=host:port", p)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("peers: %q: %w", p, err)
		}
		if _, dup := peers[id]; dup {
			return nil, fmt.Errorf("peers: id %q appears twice", id)
		}
		peers[id] = addr
	}
	return peers, nil
}

// Validate reports the first invalid field, by name.
func (c *Config) Validate() error {
	var errs []error
	if c.ID == "" {
		errs = append(errs, errors.New("id: required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: required"))
	}
	for name, addr := range map[string]string{"api-addr": c.APIAddr, "raft-addr": c.RaftAddr, "gossip-addr": c.GossipAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", name, addr))
		}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("metrics-addr: %q is not host:port", c.MetricsAddr))
		}
	}
	if host, _, err := net.SplitHostPort(c.RaftAddr); err == nil {
		// Peers dial the Raft address this node advertises, so it must name a host.
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			errs = append(errs, fmt.Errorf("raft-addr: %q must name a reachable host, not all interfaces", c.RaftAddr))
		}
	}
	if len(c.Peers) > 0 {
		if _, ok := c.Peers[c.ID]; !ok {
			errs = append(errs, fmt.Errorf("peers: must include this node's id %q", c.ID))
		}
	}
	for _, p := range c.GossipPeers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			errs = append(errs, fmt.Errorf("gossip-peers: %q is not host:port", p))
		}
	}
	if c.FrontAddr != "" {
		if ip := net.ParseIP(c.FrontAddr); ip == nil || ip.To4() == nil {
			errs = append(errs, fmt.Errorf("front-addr: %q is not an IPv4 address", c.FrontAddr))
		}
	}
	if c.WriteTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("write-timeout: %v is below 100ms", c.WriteTimeout))
	}
	if !c.Insecure && (c.TLSCA == "" || c.TLSCert == "" || c.TLSKey == "") {
		errs = append(errs, errors.New("tls-ca, tls-cert, tls-key: required unless --insecure"))
	}
	if !c.Insecure && c.GossipKeyFile == "" {
		errs = append(errs, errors.New("gossip-key-file: required unless --insecure"))
	}
	if !c.Witness && c.Iface == "" && c.InsideIface != "" {
		errs = append(errs, errors.New("iface: required when inside-iface is set"))
	}
	if c.Witness && (c.Iface != "" || c.InsideIface != "") {
		errs = append(errs, errors.New("iface: a witness has no dataplane"))
	}
	switch c.AttachMode {
	case "auto", "generic", "native":
	default:
		errs = append(errs, fmt.Errorf("attach-mode: %q is not auto, generic or native", c.AttachMode))
	}
	if c.ConnTableSize < 0 || c.ConnTableSize > maxConnTableSize {
		errs = append(errs, fmt.Errorf("conn-table-size: %d is not between 0 (the default) and %d", c.ConnTableSize, maxConnTableSize))
	}
	const minTimeout = 5 * time.Millisecond
	for name, d := range map[string]time.Duration{
		"heartbeat-timeout": c.HeartbeatTimeout, "election-timeout": c.ElectionTimeout,
		"leader-lease-timeout": c.LeaderLeaseTimeout, "commit-timeout": c.CommitTimeout,
		"snapshot-interval": c.SnapshotInterval,
	} {
		if d < minTimeout {
			errs = append(errs, fmt.Errorf("%s: %v is below %v", name, d, minTimeout))
		}
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		errs = append(errs, errors.New("leader-lease-timeout: must not exceed heartbeat-timeout"))
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		errs = append(errs, errors.New("election-timeout: must not be below heartbeat-timeout"))
	}
	if c.LeaseDuration < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("lease-duration: %v is below 100ms", c.LeaseDuration))
	}
	if c.AgentTimeout < time.Second {
		errs = append(errs, fmt.Errorf("agent-timeout: %v is below 1s", c.AgentTimeout))
	}
	if c.GARPCount < 0 || c.GARPInterval < 0 || c.GARPRefresh < 0 {
		errs = append(errs, errors.New("garp: count and intervals must not be negative"))
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}
