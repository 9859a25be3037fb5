package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func newVIPCmd() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{
		Use:   "vip",
		Short: "Show who answers for each VIP and hand VIPs over between directors",
		Args:  cobra.NoArgs,
	}
	addClientFlags(cmd, o, true)
	cmd.AddCommand(vipListCmd(o), vipMoveCmd(o))
	return cmd
}

func vipListCmd(o *clientOpts) *cobra.Command {
	var consistent bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VIPs and the NAT gateway with their owner, epoch and lease left",
		Long: `List every announced address with the director that answers for it, its epoch (bumped
on every change of owner) and what is left of the owner's lease as the answering director
sees it (the owner itself, or the Raft leader; "-" elsewhere).`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable) instead of locally")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.ListAddressesResponse, error) {
			return clusterClient(cc).ListAddresses(ctx, &raftlbv1.ListAddressesRequest{Consistent: consistent})
		}, func(w io.Writer, r *raftlbv1.ListAddressesResponse) error { return printAddresses(w, r.GetAddresses()) })
	}
	return cmd
}

func vipMoveCmd(o *clientOpts) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "move VIP --to ID",
		Short: "Hand a VIP (a NAT VIP with the whole NAT group) over to another director",
		Long: `Hand a VIP over to another director without losing a connection: the owner stops
answering, flushes its connection sync and releases the VIP, then the leader commits the
new owner, which announces the VIP with gratuitous ARP. A NAT VIP moves with the NAT
gateway and every other NAT VIP. There is no automatic failback: a VIP stays where it was
moved (or where a failover put it) until moved again.`,
		Example: "  raftlb vip move 198.51.100.10 --to d2",
		Args:    cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&to, "to", "", "id of the director to hand the VIP to")
	_ = cmd.MarkFlagRequired("to")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.MoveVipResponse, error) {
			return clusterClient(cc).MoveVip(ctx, &raftlbv1.MoveVipRequest{Vip: args[0], To: to})
		}, func(w io.Writer, r *raftlbv1.MoveVipResponse) error {
			return printAddresses(w, []*raftlbv1.Address{r.GetAddress()})
		})
	}
	return cmd
}
