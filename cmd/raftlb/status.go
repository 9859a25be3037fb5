package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

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
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.GetStatusResponse, error) {
			return clusterClient(cc).GetStatus(ctx, &raftlbv1.GetStatusRequest{Consistent: consistent})
		}, printStatus)
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
