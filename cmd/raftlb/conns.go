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

func newConnsCmd() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{
		Use:     "conns",
		Aliases: []string{"connections"},
		Short:   "Show and flush the connection table",
		Args:    cobra.NoArgs,
	}
	addClientFlags(cmd, o, true)
	cmd.AddCommand(connsListCmd(o), connsFlushCmd(o))
	return cmd
}

func connClient(cc grpc.ClientConnInterface) raftlbv1.ConnectionServiceClient {
	return raftlbv1.NewConnectionServiceClient(cc)
}

func connsListCmd(o *clientOpts) *cobra.Command {
	var vip string
	var limit uint32
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the live connection table of the director answering (--server picks it)",
		Example: "  raftlb conns list --vip 198.51.100.10",
		Args:    cobra.NoArgs,
	}
	cmd.Flags().StringVar(&vip, "vip", "", "only connections to this VIP")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "at most this many entries (default 10000)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.ListConnectionsResponse, error) {
			return connClient(cc).ListConnections(ctx, &raftlbv1.ListConnectionsRequest{Vip: vip, Limit: limit})
		}, printConns)
	}
	return cmd
}

func connsFlushCmd(o *clientOpts) *cobra.Command {
	var vip string
	cmd := &cobra.Command{
		Use:   "flush",
		Short: "Empty the connection table on every director (or only a VIP's connections)",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&vip, "vip", "", "only connections to this VIP")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.FlushConnectionsResponse, error) {
			return connClient(cc).FlushConnections(ctx, &raftlbv1.FlushConnectionsRequest{Vip: vip})
		}, func(w io.Writer, _ *raftlbv1.FlushConnectionsResponse) error {
			what := "all connections"
			if vip != "" {
				what = "connections to " + vip
			}
			_, err := fmt.Fprintf(w, "flushed %s on every director\n", what)
			return err
		})
	}
	return cmd
}

func printConns(w io.Writer, r *raftlbv1.ListConnectionsResponse) error {
	t := newTable(w, "PROTO", "CLIENT", "VIRTUAL", "REALSERVER", "STATE", "EXPIRES")
	port := func(p uint32) string { return strconv.FormatUint(uint64(p), 10) }
	for _, c := range r.GetConnections() {
		t.row(protocolWords.name(c.GetProtocol()),
			net.JoinHostPort(c.GetClientAddress(), port(c.GetClientPort())),
			net.JoinHostPort(c.GetVip(), port(c.GetVport())),
			net.JoinHostPort(c.GetRealserverAddress(), port(c.GetRealserverPort())),
			connStateWords.name(c.GetState()),
			(time.Duration(c.GetExpiresInMs()) * time.Millisecond).Round(time.Second).String())
	}
	if err := t.flush(); err != nil {
		return err
	}
	if r.GetTruncated() {
		_, err := fmt.Fprintf(w, "(more entries than shown; raise --limit)\n")
		return err
	}
	return nil
}
