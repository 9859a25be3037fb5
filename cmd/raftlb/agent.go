package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/raftlb/raftlb/agent"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/apiclient"
	"github.com/raftlb/raftlb/server/pki"
)

// EnvDirectors lists the directors an agent talks to when --directors is not given.
const EnvDirectors = "RAFTLB_DIRECTORS"

func newAgentCmd() *cobra.Command {
	var (
		cfg                    agent.Config
		directors              []string
		tlsCA, tlsCert, tlsKey string
		cleanup                bool
		logLevel               string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the realserver agent, or list the agents",
		Long: `Run the realserver agent: register with a director, watch this realserver's desired
configuration and apply it with netlink (VIPs on lo and ARP sysctls for DR and TUN,
decapsulation and an MSS clamp for TUN, the return route for NAT), repairing drift and
reporting status. SIGINT or SIGTERM stops it and leaves the configuration in place, so a
restart causes no traffic blip; --cleanup removes everything the agent added and exits.

The client certificate (OU=agent) names the realserver: its Common Name must equal --id
and its IP SANs bound the addresses the agent may register.`,
		Example: `  raftlb agent --id rs1 --directors 192.0.2.1:9443,192.0.2.2:9443 \
      --tls-ca ca.pem --tls-cert agent-rs1.pem --tls-key agent-rs1-key.pem --iface eth0
  raftlb agent --cleanup --state-dir /var/lib/raftlb-agent`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.ID, "id", "", "this realserver's id, the Common Name of its certificate")
	fs.StringSliceVar(&directors, "directors", nil, fmt.Sprintf("directors' API addresses, host:port,... (env %s); tried in turn", EnvDirectors))
	fs.StringVar(&tlsCA, "tls-ca", "", fmt.Sprintf("CA certificate, PEM (env %s)", apiclient.EnvCA))
	fs.StringVar(&tlsCert, "tls-cert", "", fmt.Sprintf("this agent's certificate, PEM, OU=agent (env %s)", apiclient.EnvCert))
	fs.StringVar(&tlsKey, "tls-key", "", fmt.Sprintf("this agent's private key, PEM (env %s)", apiclient.EnvKey))
	fs.BoolVar(&cfg.Insecure, "insecure", false, "plaintext, no certificates (only with directors run with --insecure)")
	fs.StringSliceVar(&cfg.FacingIfaces, "iface", nil, "interfaces clients' traffic arrives on and replies leave by, e.g. eth0,eth1")
	fs.StringSliceVar(&cfg.RegisterIfaces, "register-iface", nil, "interfaces whose addresses and MACs are registered (default all but lo)")
	fs.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "directory of the record of what the agent owns")
	fs.BoolVar(&cleanup, "cleanup", false, "remove everything the agent added (as recorded in --state-dir) and exit")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.IntVar(&cfg.NATTable, "nat-table", agent.DefaultNATTable, "routing table of the NAT return route")
	fs.IntVar(&cfg.MSSTable, "mss-table", agent.DefaultMSSTable, "routing table that clamps the MSS of TUN VIPs' replies")
	fs.IntVar(&cfg.RulePriority, "rule-priority", agent.DefaultRulePriority, "priority of the agent's source rules (before the main table's 32766)")
	fs.IntVar(&cfg.TunnelMSS, "tunnel-mss", 0, "MSS advertised for TUN VIPs (default the interface MTU - 60)")
	fs.StringVar(&cfg.TunnelName, "tunnel-name", agent.DefaultTunnelName, "name of the ipip device, where the kernel has ipip")
	fs.DurationVar(&cfg.ResyncInterval, "resync-interval", 2*time.Second, "period of drift repair")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 10*time.Second, "longest time between two status reports, the directors' sign of life")

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		log, err := newLogger(os.Stderr, logLevel)
		if err != nil {
			return err
		}
		if cleanup {
			if err := agent.Cleanup(cfg.StateDir, log); err != nil {
				return err
			}
			log.Info("agent configuration removed", "state_dir", cfg.StateDir)
			return nil
		}
		if !fs.Changed("directors") {
			directors = splitList(os.Getenv(EnvDirectors))
		}
		cfg.Directors = directors
		cfg.Logger = log
		if !cfg.Insecure {
			// Flags win over the environment, as for the client verbs.
			env := apiclient.FromEnv(os.Getenv)
			for _, p := range []struct {
				flag     string
				val, env *string
			}{{"tls-ca", &tlsCA, &env.CA}, {"tls-cert", &tlsCert, &env.Cert}, {"tls-key", &tlsKey, &env.Key}} {
				if !fs.Changed(p.flag) {
					*p.val = *p.env
				}
			}
			if tlsCA == "" || tlsCert == "" || tlsKey == "" {
				return usagef("--tls-ca, --tls-cert and --tls-key (or %s, %s, %s) are required unless --insecure",
					apiclient.EnvCA, apiclient.EnvCert, apiclient.EnvKey)
			}
			if cfg.TLS, err = pki.ClientTLS(tlsCA, tlsCert, tlsKey); err != nil {
				return err
			}
		}
		cfg.Defaults()
		if err := cfg.Validate(); err != nil {
			return usageError{fmt.Errorf("invalid agent config:\n%w", err)}
		}
		return agent.Run(cmd.Context(), cfg)
	}
	cmd.AddCommand(agentListCmd())
	return cmd
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func agentListCmd() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the realserver agents and what each applied",
		Args:    cobra.NoArgs,
	}
	addClientFlags(cmd, o, false)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.ListAgentsResponse, error) {
			return raftlbv1.NewAgentServiceClient(cc).ListAgents(ctx, &raftlbv1.ListAgentsRequest{})
		}, func(w io.Writer, r *raftlbv1.ListAgentsResponse) error {
			return printAgents(w, r.GetAgents(), time.Now())
		})
	}
	return cmd
}

// printAgents writes one row per agent and VIP result.
func printAgents(w io.Writer, agents []*raftlbv1.AgentInfo, now time.Time) error {
	t := newTable(w, "AGENT", "ADDRESSES", "APPLIED", "DECAP", "VIP", "RESULT", "LAST SEEN", "ERROR")
	for _, a := range agents {
		var addrs []string
		for _, ifc := range a.GetInterfaces() {
			addrs = append(addrs, ifc.GetAddresses()...)
		}
		head := []string{a.GetId(), orDash(strings.Join(addrs, ",")), strconv.FormatUint(a.GetAppliedGeneration(), 10),
			orDash(a.GetDecapMode())}
		tailCells := []string{lastSeen(a, now), orDash(oneLine(a.GetError()))}
		if len(a.GetVips()) == 0 {
			t.row(append(append(head, "-", "-"), tailCells...)...)
			continue
		}
		for _, v := range a.GetVips() {
			t.row(append(append(head, v.GetVip(), vipResult(v)), tailCells...)...)
		}
	}
	return t.flush()
}

// vipResult is "applied" or the agent's error for one VIP.
func vipResult(v *raftlbv1.VipResult) string {
	switch {
	case v.GetApplied():
		return "applied"
	case v.GetError() != "":
		return "error: " + oneLine(v.GetError())
	default:
		return "pending"
	}
}

// lastSeen says how long ago the agent last registered or reported.
func lastSeen(a *raftlbv1.AgentInfo, now time.Time) string {
	ms := a.GetLastSeenMs()
	if ms == 0 && a.GetLastSeenUnixMs() != 0 {
		ms = now.UnixMilli() - a.GetLastSeenUnixMs()
	}
	if ms == 0 && a.GetLastSeenUnixMs() == 0 {
		return "never"
	}
	return (time.Duration(max(ms, 0)) * time.Millisecond).Round(100*time.Millisecond).String() + " ago"
}

// oneLine joins a multi-line message (errors.Join) for a table cell.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }
