// Command raftlb is the one raftlb binary: director, witness, realserver agent, API client,
// dev PKI and the network-namespace lab. It only wires flags to the packages that do the work.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal starts a graceful shutdown; a second one kills, as usual.
		<-ctx.Done()
		stop()
	}()
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "raftlb: "+errorMessage(err))
		os.Exit(exitCode(err))
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "raftlb",
		Short: "Raft-replicated layer-4 load-balancer directors",
		Long: `raftlb runs LVS-style layer-4 load-balancer directors that replicate their
services, realservers, VIP ownership and connection table with Raft, and talks to them.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newDirectorCmd(),
		newAgentCmd(),
		newServiceCmd(),
		newRealserverCmd(),
		newStatusCmd(),
		newClusterCmd(),
		newAddressCmd(),
		newVIPCmd(),
		newConnsCmd(),
		newTLSCmd(),
		newLabCmd(),
	)
	return root
}

// usageError is a mistake on the command line rather than a failure: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usageError naming what was wrong.
func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// errorMessage prints a gRPC error as the server's message and its code, which is what
// a user can act on; anything else as it is.
func errorMessage(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		s := se.GRPCStatus()
		return fmt.Sprintf("%s (%s)", s.Message(), s.Code())
	}
	return err.Error()
}

// exitCode is 2 for command-line mistakes, 1 for anything else. Cobra reports unknown
// commands and missing required flags as plain errors, recognised by their wording.
func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") ||
		strings.HasPrefix(err.Error(), "required flag") {
		return 2
	}
	return 1
}

// newLogger returns a text logger on w at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level: %q is not debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
