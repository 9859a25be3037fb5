package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/raftlb/raftlb/dataplane"
	"github.com/raftlb/raftlb/server"
)

// configFlags binds director flags to a scratch Config and remembers, per flag, how to
// copy its value into the real one, so that only flags the user set override the file.
type configFlags struct {
	fs    *pflag.FlagSet
	src   server.Config
	apply map[string]func(dst *server.Config)
}

// bindFlag registers one flag for the Config field that field selects. Defaults stay
// zero here: Config.Defaults fills them after the file and the flags are merged.
func bindFlag[T comparable](f *configFlags, field func(*server.Config) *T,
	define func(p *T, name string, value T, usage string), name string, def T, usage string) {
	define(field(&f.src), name, def, usage)
	f.apply[name] = func(dst *server.Config) { *field(dst) = *field(&f.src) }
}

func newDirectorCmd() *cobra.Command {
	var (
		file        string
		peers       string
		gossipPeers []string
		logLevel    string
	)
	cmd := &cobra.Command{
		Use:   "director",
		Short: "Run a director (or, with --witness, a witness)",
		Long: `Run a director: a Raft voter that serves the gRPC API and, unless it is a witness,
owns VIPs and forwards their traffic. Flags override the YAML file given with --config.
SIGINT or SIGTERM shuts it down gracefully.`,
		Args: cobra.NoArgs,
	}
	var d server.Config
	d.Defaults()
	f := &configFlags{fs: cmd.Flags(), apply: map[string]func(*server.Config){}}
	fs := cmd.Flags()
	fs.StringVar(&file, "config", "", "YAML config file; flags given on the command line override it")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&peers, "peers", "", "initial voters as id=host:port,... (Raft addresses, this node included)")
	fs.StringSliceVar(&gossipPeers, "gossip-peers", nil, "memberlist addresses to join (default: each peer's host on the gossip port)")

	str := func(field func(*server.Config) *string, name, def, usage string) {
		bindFlag(f, field, fs.StringVar, name, def, usage)
	}
	dur := func(field func(*server.Config) *time.Duration, name string, usage string, def time.Duration) {
		bindFlag(f, field, fs.DurationVar, name, 0, fmt.Sprintf("%s (default %v)", usage, def))
	}
	str(func(c *server.Config) *string { return &c.ID }, "id", "", "unique id of this node in Raft and memberlist")
	bindFlag(f, func(c *server.Config) *bool { return &c.Witness }, fs.BoolVar, "witness", false,
		"vote in Raft and serve the API, but never own an address and run no dataplane")
	str(func(c *server.Config) *string { return &c.DataDir }, "data-dir", "", "directory for the Raft log, stable store and snapshots")
	str(func(c *server.Config) *string { return &c.APIAddr }, "api-addr", "", fmt.Sprintf("gRPC API listen address (default %s)", d.APIAddr))
	str(func(c *server.Config) *string { return &c.RaftAddr }, "raft-addr", "",
		fmt.Sprintf("Raft address, listened on and advertised to peers (default %s)", d.RaftAddr))
	str(func(c *server.Config) *string { return &c.GossipAddr }, "gossip-addr", "",
		fmt.Sprintf("memberlist address (default the Raft host, port %d)", server.DefaultGossipPort))
	str(func(c *server.Config) *string { return &c.MetricsAddr }, "metrics-addr", "",
		fmt.Sprintf("Prometheus /metrics listen address (default :%d); --metrics-addr='' disables it", server.DefaultMetricsPort))
	str(func(c *server.Config) *string { return &c.TLSCA }, "tls-ca", "", "CA certificate (PEM) that signs every peer and client")
	str(func(c *server.Config) *string { return &c.TLSCert }, "tls-cert", "", "this node's certificate (PEM, OU=director)")
	str(func(c *server.Config) *string { return &c.TLSKey }, "tls-key", "", "this node's private key (PEM)")
	bindFlag(f, func(c *server.Config) *bool { return &c.Insecure }, fs.BoolVar, "insecure", false,
		"serve the API in plaintext without client certificates (never in production)")
	str(func(c *server.Config) *string { return &c.GossipKeyFile }, "gossip-key-file", "", "memberlist encryption key file (16, 24 or 32 bytes, raw or base64)")
	str(func(c *server.Config) *string { return &c.Iface }, "iface", "", "front interface (clients, DR and TUN realservers)")
	str(func(c *server.Config) *string { return &c.FrontAddr }, "front-addr", "", "this director's IPv4 address on --iface, the outer source of TUN packets (default the interface's first)")
	str(func(c *server.Config) *string { return &c.InsideIface }, "inside-iface", "", "inside interface (NAT realservers and the gateway address)")
	str(func(c *server.Config) *string { return &c.AttachMode }, "attach-mode", "", "XDP attach mode: auto, generic or native (default auto)")
	bindFlag(f, func(c *server.Config) *int { return &c.ConnTableSize }, fs.IntVar, "conn-table-size", 0,
		"connections the dataplane's table holds, ~150 bytes each with the reverse-NAT table (default 262144)")
	dur(func(c *server.Config) *time.Duration { return &c.HeartbeatTimeout }, "heartbeat-timeout", "Raft heartbeat timeout", d.HeartbeatTimeout)
	dur(func(c *server.Config) *time.Duration { return &c.ElectionTimeout }, "election-timeout", "Raft election timeout", d.ElectionTimeout)
	dur(func(c *server.Config) *time.Duration { return &c.LeaderLeaseTimeout }, "leader-lease-timeout", "Raft leader lease timeout", d.LeaderLeaseTimeout)
	dur(func(c *server.Config) *time.Duration { return &c.CommitTimeout }, "commit-timeout", "Raft commit timeout", d.CommitTimeout)
	bindFlag(f, func(c *server.Config) *uint64 { return &c.SnapshotThreshold }, fs.Uint64Var, "snapshot-threshold", 0,
		fmt.Sprintf("Raft log entries between snapshots (default %d)", d.SnapshotThreshold))
	dur(func(c *server.Config) *time.Duration { return &c.SnapshotInterval }, "snapshot-interval",
		"how often Raft checks whether --snapshot-threshold entries have accumulated", d.SnapshotInterval)
	dur(func(c *server.Config) *time.Duration { return &c.WriteTimeout }, "write-timeout", "how long a request waits for a leader and its commit", d.WriteTimeout)
	dur(func(c *server.Config) *time.Duration { return &c.LeaseDuration }, "lease-duration", "how long a granted address lease lets the dataplane answer", d.LeaseDuration)
	bindFlag(f, func(c *server.Config) *int { return &c.GARPCount }, fs.IntVar, "garp-count", 0,
		fmt.Sprintf("gratuitous ARPs sent on takeover (default %d)", d.GARPCount))
	dur(func(c *server.Config) *time.Duration { return &c.GARPInterval }, "garp-interval", "spacing of the takeover gratuitous ARPs", d.GARPInterval)
	dur(func(c *server.Config) *time.Duration { return &c.GARPRefresh }, "garp-refresh", "period of the gratuitous ARP refresh", d.GARPRefresh)
	dur(func(c *server.Config) *time.Duration { return &c.AgentTimeout }, "agent-timeout",
		"how long a realserver's agent may go without reporting before its realservers count as down", d.AgentTimeout)

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		log, err := newLogger(os.Stderr, logLevel)
		if err != nil {
			return err
		}
		var cfg server.Config
		if file != "" {
			if cfg, err = server.LoadConfigFile(file); err != nil {
				return err
			}
		}
		fs.Visit(func(fl *pflag.Flag) {
			if apply, ok := f.apply[fl.Name]; ok {
				apply(&cfg)
			}
		})
		// Metrics are on by default, which Config.Defaults leaves to the command line.
		if !fs.Changed("metrics-addr") && cfg.MetricsAddr == "" {
			cfg.MetricsAddr = fmt.Sprintf(":%d", server.DefaultMetricsPort)
		}
		if fs.Changed("peers") {
			if cfg.Peers, err = server.ParsePeers(peers); err != nil {
				return usageError{err}
			}
		}
		if fs.Changed("gossip-peers") {
			cfg.GossipPeers = gossipPeers
		}
		cfg.Defaults()
		if err := cfg.Validate(); err != nil {
			return usageError{fmt.Errorf("invalid director config:\n%w", err)}
		}
		opts, closeDP, err := openDataplane(cfg, log)
		if err != nil {
			return err
		}
		defer closeDP()
		d, err := server.New(cfg, log, opts...)
		if err != nil {
			return err
		}
		return d.Run(cmd.Context())
	}
	return cmd
}

// openDataplane opens a full director's packet path on --iface and
// --inside-iface (the process runs in the director's network namespace);
// a witness, or a director without --iface, has none.
func openDataplane(cfg server.Config, log *slog.Logger) ([]server.Option, func(), error) {
	if cfg.Witness || cfg.Iface == "" {
		return nil, func() {}, nil
	}
	mode, err := dataplane.ParseAttachMode(cfg.AttachMode)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--attach-mode: %w", err)}
	}
	dp, err := dataplane.Open(dataplane.Config{
		FrontIface:    cfg.Iface,
		InsideIface:   cfg.InsideIface,
		AttachMode:    mode,
		ConnTableSize: cfg.ConnTableSize,
		Logger:        log.With("id", cfg.ID),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("open dataplane: %w", err)
	}
	closeDP := func() {
		if err := dp.Close(); err != nil {
			log.Warn("close dataplane", "err", err)
		}
	}
	return []server.Option{server.WithDataplane(server.NewPacketPath(dp, log.With("id", cfg.ID)))}, closeDP, nil
}
