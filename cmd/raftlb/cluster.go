package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func newClusterCmd() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Change the cluster's membership",
		Args:  cobra.NoArgs,
	}
	addClientFlags(cmd, o, true)
	cmd.AddCommand(clusterJoinCmd(o), clusterRemoveCmd(o))
	return cmd
}

func clusterJoinCmd(o *clientOpts) *cobra.Command {
	d := &raftlbv1.Director{}
	cmd := &cobra.Command{
		Use:     "join",
		Short:   "Add a director (or witness) as a Raft voter",
		Example: "  raftlb cluster join --id d3 --api-addr 192.0.2.4:9443 --raft-addr 203.0.113.4:9444 --gossip-addr 203.0.113.4:9445",
		Args:    cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&d.Id, "id", "", "id of the new director")
	fs.StringVar(&d.ApiAddress, "api-addr", "", "its gRPC API address, host:port")
	fs.StringVar(&d.RaftAddress, "raft-addr", "", "its Raft address, host:port")
	fs.StringVar(&d.GossipAddress, "gossip-addr", "", "its memberlist address, host:port")
	fs.BoolVar(&d.Witness, "witness", false, "it is a witness: votes, never owns an address")
	for _, name := range []string{"id", "api-addr", "raft-addr"} {
		_ = cmd.MarkFlagRequired(name)
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.JoinDirectorResponse, error) {
			return clusterClient(cc).JoinDirector(ctx, &raftlbv1.JoinDirectorRequest{Director: d})
		}, func(w io.Writer, _ *raftlbv1.JoinDirectorResponse) error {
			_, err := fmt.Fprintf(w, "%s joined\n", d.GetId())
			return err
		})
	}
	return cmd
}

func clusterRemoveCmd(o *clientOpts) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "remove",
		Short: "Remove a director from the Raft configuration",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&id, "id", "", "id of the director to remove")
	_ = cmd.MarkFlagRequired("id")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.RemoveDirectorResponse, error) {
			return clusterClient(cc).RemoveDirector(ctx, &raftlbv1.RemoveDirectorRequest{Id: id})
		}, func(w io.Writer, _ *raftlbv1.RemoveDirectorResponse) error {
			_, err := fmt.Fprintf(w, "%s removed\n", id)
			return err
		})
	}
	return cmd
}
