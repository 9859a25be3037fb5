package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// realserverFlags are one realserver's settings.
type realserverFlags struct {
	address string
	rport   uint32
	weight  uint32
	method  string
	drain   bool
}

func (f *realserverFlags) add(cmd *cobra.Command, withSettings bool) {
	fs := cmd.Flags()
	fs.StringVar(&f.address, "address", "", "realserver IPv4 address (front address for dr and tun, inside address for nat)")
	fs.Uint32Var(&f.rport, "rport", 0, "realserver port (default the service's port)")
	_ = cmd.MarkFlagRequired("address")
	if withSettings {
		fs.Uint32Var(&f.weight, "weight", 1, "relative weight, 0-65535; 0 takes no new connections")
		fs.StringVar(&f.method, "method", "dr", "forwarding method: "+methodWords.list())
		fs.BoolVar(&f.drain, "drain", false, "keep existing connections but take no new ones (--drain=false to activate)")
	}
}

// apply writes the settings into rs: all of them when all is set (add), otherwise only
// those the user gave (update).
func (f *realserverFlags) apply(fs *pflag.FlagSet, rs *raftlbv1.Realserver, all bool) error {
	set := func(name string) bool { return all || fs.Changed(name) }
	if set("weight") {
		rs.Weight = f.weight
	}
	if set("method") {
		m, err := methodWords.parse("method", f.method)
		if err != nil {
			return err
		}
		rs.Method = m
	}
	if set("drain") {
		rs.AdminState = raftlbv1.AdminState_ADMIN_STATE_ACTIVE
		if f.drain {
			rs.AdminState = raftlbv1.AdminState_ADMIN_STATE_DRAIN
		}
	}
	return nil
}

func newRealserverCmd() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{
		Use:     "realserver",
		Aliases: []string{"rs"},
		Short:   "Add, change, remove and list a service's realservers",
		Args:    cobra.NoArgs,
	}
	addClientFlags(cmd, o, true)
	cmd.AddCommand(realserverAddCmd(o), realserverUpdateCmd(o), realserverDelCmd(o), realserverListCmd(o))
	return cmd
}

func realserverAddCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	var f realserverFlags
	cmd := &cobra.Command{
		Use:     "add",
		Short:   "Add a realserver to a virtual service",
		Example: "  raftlb realserver add --vip 198.51.100.10 --port 80 --proto tcp --address 192.0.2.11 --weight 100 --method dr",
		Args:    cobra.NoArgs,
	}
	k.add(cmd)
	f.add(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		rs := &raftlbv1.Realserver{Address: f.address, Port: f.rport}
		if err := f.apply(cmd.Flags(), rs, true); err != nil {
			return err
		}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.AddRealserverResponse, error) {
			return lbClient(cc).AddRealserver(ctx, &raftlbv1.AddRealserverRequest{Service: key, Realserver: rs})
		}, func(w io.Writer, r *raftlbv1.AddRealserverResponse) error {
			return printRealservers(w, []*raftlbv1.Realserver{r.GetRealserver()})
		})
	}
	return cmd
}

func realserverUpdateCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	var f realserverFlags
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Change a realserver's weight, method or admin state; settings not given stay as they are",
		Args:  cobra.NoArgs,
	}
	k.add(cmd)
	f.add(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		if err := f.apply(cmd.Flags(), &raftlbv1.Realserver{}, false); err != nil {
			return err
		}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.UpdateRealserverResponse, error) {
			// The API replaces weight, method and admin state together: start from the current ones.
			list, err := lbClient(cc).ListRealservers(ctx, &raftlbv1.ListRealserversRequest{Service: key, Consistent: true})
			if err != nil {
				return nil, err
			}
			rs := findRealserver(list.GetRealservers(), f.address, f.rport, key.GetPort())
			if rs == nil {
				port := f.rport
				if port == 0 {
					port = key.GetPort()
				}
				return nil, status.Errorf(codes.NotFound, "realserver %s not found in %s",
					net.JoinHostPort(f.address, strconv.FormatUint(uint64(port), 10)), keyString(key))
			}
			rs.Health, rs.Stats = raftlbv1.HealthState_HEALTH_STATE_UNSPECIFIED, nil
			if err := f.apply(cmd.Flags(), rs, false); err != nil {
				return nil, err
			}
			return lbClient(cc).UpdateRealserver(ctx, &raftlbv1.UpdateRealserverRequest{Service: key, Realserver: rs})
		}, func(w io.Writer, r *raftlbv1.UpdateRealserverResponse) error {
			return printRealservers(w, []*raftlbv1.Realserver{r.GetRealserver()})
		})
	}
	return cmd
}

// findRealserver finds address:port among rss; port zero stands for the service's port.
func findRealserver(rss []*raftlbv1.Realserver, address string, port, servicePort uint32) *raftlbv1.Realserver {
	eff := func(p uint32) uint32 {
		if p == 0 {
			return servicePort
		}
		return p
	}
	for _, rs := range rss {
		if rs.GetAddress() == address && eff(rs.GetPort()) == eff(port) {
			return rs
		}
	}
	return nil
}

func realserverDelCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	var f realserverFlags
	cmd := &cobra.Command{
		Use:     "del",
		Aliases: []string{"delete", "rm"},
		Short:   "Remove a realserver from a virtual service",
		Args:    cobra.NoArgs,
	}
	k.add(cmd)
	f.add(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.RemoveRealserverResponse, error) {
			return lbClient(cc).RemoveRealserver(ctx, &raftlbv1.RemoveRealserverRequest{Service: key, Address: f.address, Port: f.rport})
		}, func(w io.Writer, _ *raftlbv1.RemoveRealserverResponse) error {
			_, err := fmt.Fprintf(w, "removed %s from %s\n", f.address, keyString(key))
			return err
		})
	}
	return cmd
}

func realserverListCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	var consistent bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List a virtual service's realservers",
		Args:    cobra.NoArgs,
	}
	k.add(cmd)
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable) instead of locally")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		// The table joins each realserver with its agent's status; -o json prints the
		// API's answer as it is (the agents are in `raftlb agent list -o json`).
		var agents []*raftlbv1.AgentInfo
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.ListRealserversResponse, error) {
			r, err := lbClient(cc).ListRealservers(ctx, &raftlbv1.ListRealserversRequest{Service: key, Consistent: consistent})
			if err != nil || o.output == outputJSON {
				return r, err
			}
			a, err := raftlbv1.NewAgentServiceClient(cc).ListAgents(ctx, &raftlbv1.ListAgentsRequest{})
			agents = a.GetAgents()
			return r, err
		}, func(w io.Writer, r *raftlbv1.ListRealserversResponse) error {
			return printRealserverAgents(w, key.GetVip(), r.GetRealservers(), agents, time.Now())
		})
	}
	return cmd
}

// printRealserverAgents is printRealservers with the status of each realserver's agent:
// the agent registered with the realserver's address, the generation it applied, what
// it did for this service (for DR and TUN its result for the VIP; for NAT whether its
// last pass succeeded) and when it last reported.
func printRealserverAgents(w io.Writer, vip string, rss []*raftlbv1.Realserver, agents []*raftlbv1.AgentInfo, now time.Time) error {
	byAddr := make(map[netip.Addr]*raftlbv1.AgentInfo)
	for _, a := range agents {
		for _, ifc := range a.GetInterfaces() {
			for _, s := range ifc.GetAddresses() {
				if p, err := netip.ParsePrefix(s); err == nil {
					byAddr[p.Addr()] = a
				} else if ip, err := netip.ParseAddr(s); err == nil {
					byAddr[ip] = a
				}
			}
		}
	}
	t := newTable(w, "REALSERVER", "PORT", "WEIGHT", "METHOD", "ADMIN", "HEALTH", "ACTIVE", "CONNECTIONS",
		"AGENT", "APPLIED", "AGENT STATE", "LAST SEEN")
	for _, rs := range rss {
		cells := []string{rs.GetAddress(), orDash(uintOrEmpty(rs.GetPort())), strconv.FormatUint(uint64(rs.GetWeight()), 10),
			methodWords.name(rs.GetMethod()), adminStateWords.name(rs.GetAdminState()), healthStateWords.name(rs.GetHealth()),
			strconv.FormatUint(rs.GetStats().GetActiveConnections(), 10), strconv.FormatUint(rs.GetStats().GetConnections(), 10)}
		ip, _ := netip.ParseAddr(rs.GetAddress())
		a, ok := byAddr[ip]
		if !ok {
			t.row(append(cells, "-", "-", "no agent", "-")...)
			continue
		}
		t.row(append(cells, a.GetId(), strconv.FormatUint(a.GetAppliedGeneration(), 10), agentState(a, vip, rs.GetMethod()), lastSeen(a, now))...)
	}
	return t.flush()
}

// agentState is what agent a did for a realserver of the service on vip.
func agentState(a *raftlbv1.AgentInfo, vip string, m raftlbv1.ForwardingMethod) string {
	if m == raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT {
		if a.GetError() != "" {
			return "error: " + oneLine(a.GetError())
		}
		if a.GetAppliedGeneration() == 0 {
			return "pending"
		}
		return "applied"
	}
	for _, v := range a.GetVips() {
		if v.GetVip() == vip {
			return vipResult(v)
		}
	}
	return "pending"
}
