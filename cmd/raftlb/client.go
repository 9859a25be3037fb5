package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/raftlb/raftlb/server/apiclient"
)

// clientOpts are the flags every API verb shares.
type clientOpts struct {
	server, ca, cert, key string
	insecure              bool
	timeout               time.Duration
	output                string
}

// addClientFlags puts the connection and output flags on a verb group (persistent, so
// every subcommand has them) or on a single verb.
func addClientFlags(cmd *cobra.Command, o *clientOpts, persistent bool) {
	fs := cmd.Flags()
	if persistent {
		fs = cmd.PersistentFlags()
	}
	fs.StringVar(&o.server, "server", "", fmt.Sprintf("director API address (env %s, default %s)", apiclient.EnvServer, apiclient.DefaultServer))
	fs.StringVar(&o.ca, "ca", "", fmt.Sprintf("CA certificate, PEM (env %s)", apiclient.EnvCA))
	fs.StringVar(&o.cert, "cert", "", fmt.Sprintf("client certificate, PEM (env %s)", apiclient.EnvCert))
	fs.StringVar(&o.key, "key", "", fmt.Sprintf("client key, PEM (env %s)", apiclient.EnvKey))
	fs.BoolVar(&o.insecure, "insecure", false, "plaintext, no certificates (only for a director run with --insecure)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Second, "deadline of the whole request")
	fs.StringVarP(&o.output, "output", "o", outputTable, "output format: table or json")
}

// options merges the environment with the flags the user set, flags winning.
func (o *clientOpts) options(cmd *cobra.Command) apiclient.Options {
	opts := apiclient.FromEnv(os.Getenv)
	fs := cmd.Flags()
	for name, p := range map[string]struct{ dst, flag *string }{
		"server": {&opts.Server, &o.server}, "ca": {&opts.CA, &o.ca},
		"cert": {&opts.Cert, &o.cert}, "key": {&opts.Key, &o.key},
	} {
		if fs.Changed(name) {
			*p.dst = *p.flag
		}
	}
	opts.Insecure = o.insecure
	return opts
}

// call runs one RPC against the server the flags name and prints its answer with
// render, or as JSON with -o json.
func call[M proto.Message](cmd *cobra.Command, o *clientOpts,
	rpc func(ctx context.Context, cc grpc.ClientConnInterface) (M, error),
	render func(w io.Writer, m M) error) error {
	if o.output != outputTable && o.output != outputJSON {
		return usagef("--output: %q is not table or json", o.output)
	}
	if o.timeout <= 0 {
		return usagef("--timeout: %v is not positive", o.timeout)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	cc, err := apiclient.Dial(ctx, o.options(cmd))
	if err != nil {
		return err
	}
	defer cc.Close()
	m, err := rpc(ctx, cc)
	if err != nil {
		return err // a gRPC status: main prints the server's message and code
	}
	w := cmd.OutOrStdout()
	if o.output == outputJSON {
		return printJSON(w, m)
	}
	return render(w, m)
}
