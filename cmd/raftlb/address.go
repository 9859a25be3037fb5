package main

import (
	"context"
	"io"
	"strconv"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func newAddressCmd() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{
		Use:   "address",
		Short: "Declare and list the addresses the cluster announces (VIPs, NAT gateway)",
		Args:  cobra.NoArgs,
	}
	addClientFlags(cmd, o, true)
	cmd.AddCommand(addressSetCmd(o), addressListCmd(o))
	return cmd
}

func addressSetCmd(o *clientOpts) *cobra.Command {
	var address, kind, owner string
	cmd := &cobra.Command{
		Use:     "set",
		Short:   "Declare an address: a VIP's preferred owner or the NAT gateway",
		Example: "  raftlb address set --address 203.0.113.254 --kind nat-gateway --owner d1",
		Args:    cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&address, "address", "", "IPv4 address")
	fs.StringVar(&kind, "kind", "vip", "kind: "+addressKindWords.list())
	fs.StringVar(&owner, "owner", "", "preferred owner, a director id (default: the cluster chooses)")
	_ = cmd.MarkFlagRequired("address")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		k, err := addressKindWords.parse("kind", kind)
		if err != nil {
			return err
		}
		a := &raftlbv1.Address{Address: address, Kind: k, PreferredOwner: owner}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.SetAddressResponse, error) {
			return clusterClient(cc).SetAddress(ctx, &raftlbv1.SetAddressRequest{Address: a})
		}, func(w io.Writer, r *raftlbv1.SetAddressResponse) error {
			return printAddresses(w, []*raftlbv1.Address{r.GetAddress()})
		})
	}
	return cmd
}

func addressListCmd(o *clientOpts) *cobra.Command {
	var consistent bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List announced addresses and their owners",
		Args:    cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable) instead of locally")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.ListAddressesResponse, error) {
			return clusterClient(cc).ListAddresses(ctx, &raftlbv1.ListAddressesRequest{Consistent: consistent})
		}, func(w io.Writer, r *raftlbv1.ListAddressesResponse) error { return printAddresses(w, r.GetAddresses()) })
	}
	return cmd
}

func printAddresses(w io.Writer, as []*raftlbv1.Address) error {
	t := newTable(w, "ADDRESS", "KIND", "PREFERRED", "OWNER", "EPOCH", "LEASE LEFT")
	for _, a := range as {
		// Only the owner and the leader know a lease: elsewhere it is
		// zero, which must not read as "expired".
		lease := "-"
		if ms := a.GetLeaseRemainingMs(); a.GetOwner() != "" && ms > 0 {
			lease = strconv.FormatInt(ms, 10) + "ms"
		}
		t.row(a.GetAddress(), addressKindWords.name(a.GetKind()), orDash(a.GetPreferredOwner()), orDash(a.GetOwner()),
			strconv.FormatUint(a.GetEpoch(), 10), lease)
	}
	return t.flush()
}
