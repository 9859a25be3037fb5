package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func clusterClient(cc grpc.ClientConnInterface) raftlbv1.ClusterServiceClient {
	return raftlbv1.NewClusterServiceClient(cc)
}

func newStatusCmd() *cobra.Command {
	o := &clientOpts{}
	var consistent bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster as the director answering sees it",
		Args:  cobra.NoArgs,
	}
	addClientFlags(cmd, o, false)
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable) instead of locally")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		// The table adds the realservers' health and the agents; -o json prints the API's
		// answer as it is (those are in `raftlb service list -o json` and
		// `raftlb agent list -o json`).
		var (
			agents []*raftlbv1.AgentInfo
			svcs   []*raftlbv1.VirtualService
		)
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.GetStatusResponse, error) {
			r, err := clusterClient(cc).GetStatus(ctx, &raftlbv1.GetStatusRequest{Consistent: consistent})
			if err != nil || o.output == outputJSON {
				return r, err
			}
			s, err := lbClient(cc).ListServices(ctx, &raftlbv1.ListServicesRequest{Consistent: consistent})
			if err != nil {
				return r, err
			}
			svcs = s.GetServices()
			a, err := raftlbv1.NewAgentServiceClient(cc).ListAgents(ctx, &raftlbv1.ListAgentsRequest{})
			agents = a.GetAgents()
			return r, err
		}, func(w io.Writer, r *raftlbv1.GetStatusResponse) error {
			if err := printStatus(w, r); err != nil {
				return err
			}
			if len(svcs) > 0 {
				fmt.Fprintln(w)
				if err := printHealthSummary(w, svcs); err != nil {
					return err
				}
			}
			if len(agents) == 0 {
				return nil
			}
			fmt.Fprintln(w)
			return printAgentSummary(w, agents, time.Now())
		})
	}
	return cmd
}

func printStatus(w io.Writer, r *raftlbv1.GetStatusResponse) error {
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	t := newTable(w, "DIRECTOR", "RAFT STATE", "TERM", "LEADER", "COMMIT", "APPLIED", "GENERATION", "SERVICES", "REALSERVERS", "CONNECTIONS", "SYNC LAG")
	t.row(r.GetId(), r.GetRaftState(), u(r.GetTerm()), orDash(r.GetLeaderId()), u(r.GetCommitIndex()), u(r.GetAppliedIndex()),
		u(r.GetGeneration()), u(uint64(r.GetServiceCount())), u(uint64(r.GetRealserverCount())), u(r.GetConnectionCount()),
		fmt.Sprintf("%dms", r.GetConnectionSyncLagMs()))
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "ID", "ROLE", "API", "RAFT", "GOSSIP", "SUFFRAGE", "GOSSIP STATE", "LEADER")
	for _, d := range r.GetDirectors() {
		role := "director"
		if d.GetDirector().GetWitness() {
			role = "witness"
		}
		leader := ""
		if d.GetLeader() {
			leader = "*"
		}
		t.row(d.GetDirector().GetId(), role, orDash(d.GetDirector().GetApiAddress()), orDash(d.GetDirector().GetRaftAddress()),
			orDash(d.GetDirector().GetGossipAddress()), orDash(d.GetSuffrage()), orDash(d.GetGossipState()), leader)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(r.GetAddresses()) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	return printAddresses(w, r.GetAddresses())
}

// printAgentSummary writes one row per agent: what it applied, how many of its VIPs
// are in place, when it last reported and its error.
func printAgentSummary(w io.Writer, agents []*raftlbv1.AgentInfo, now time.Time) error {
	t := newTable(w, "AGENT", "APPLIED", "DECAP", "VIPS APPLIED", "LAST SEEN", "ERROR")
	for _, a := range agents {
		applied := 0
		for _, v := range a.GetVips() {
			if v.GetApplied() {
				applied++
			}
		}
		t.row(a.GetId(), strconv.FormatUint(a.GetAppliedGeneration(), 10), orDash(a.GetDecapMode()),
			fmt.Sprintf("%d/%d", applied, len(a.GetVips())), lastSeen(a, now), orDash(oneLine(a.GetError())))
	}
	return t.flush()
}

// printHealthSummary writes one row per realserver of every service: its replicated
// health verdict and the answering director's counters.
func printHealthSummary(w io.Writer, svcs []*raftlbv1.VirtualService) error {
	t := newTable(w, "SERVICE", "REALSERVER", "METHOD", "HEALTH", "ACTIVE", "CONNECTIONS")
	for _, s := range svcs {
		for _, rs := range s.GetRealservers() {
			t.row(keyString(s.GetKey()), net.JoinHostPort(rs.GetAddress(), strconv.FormatUint(uint64(rs.GetPort()), 10)),
				methodWords.name(rs.GetMethod()), healthStateWords.name(rs.GetHealth()),
				strconv.FormatUint(rs.GetStats().GetActiveConnections(), 10), strconv.FormatUint(rs.GetStats().GetConnections(), 10))
		}
	}
	return t.flush()
}
