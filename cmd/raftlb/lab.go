package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/raftlb/raftlb/deploy/lab"
)

// labOpts are the flags every lab verb shares.
type labOpts struct {
	prefix, dir, logLevel string
}

func (o *labOpts) lab() (*lab.Lab, error) {
	log, err := newLogger(os.Stderr, o.logLevel)
	if err != nil {
		return nil, err
	}
	return lab.New(o.prefix, o.dir, log)
}

func newLabCmd() *cobra.Command {
	o := &labOpts{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "The whole topology in network namespaces on this machine (root)",
		Long: `The lab builds two L2 segments in network namespaces — clients, two directors, a
witness and three realservers — and runs raftlb in them. Only documentation addresses
are used and nothing leaves the machine. Run the CLI inside it as
  ip netns exec rlb-client raftlb ...
after eval "$(raftlb lab env)".`,
		Args: cobra.NoArgs,
	}
	fs := cmd.PersistentFlags()
	fs.StringVar(&o.prefix, "prefix", lab.DefaultPrefix, "name prefix of the lab's namespaces (must start with rlb)")
	fs.StringVar(&o.dir, "dir", lab.DefaultDir, "the lab's state directory (pids, logs, certificates, data)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	cmd.AddCommand(labUpCmd(o), labDownCmd(o), labEnvCmd(o), labDemoCmd(o), labBackendCmd())
	return cmd
}

// self is this binary, which the lab runs inside its namespaces.
func self() (string, error) {
	bin, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own binary: %w", err)
	}
	return bin, nil
}

func labUpCmd(o *labOpts) *cobra.Command {
	var directors, backends, agents bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build the lab and start the directors, the witness, the backends and the agents",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&directors, "directors", true, "start d1, d2 and the witness w1")
	cmd.Flags().BoolVar(&backends, "backends", true, "start the lab backend on every realserver")
	cmd.Flags().BoolVar(&agents, "agents", true, "start the raftlb agent on every realserver")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		l, err := o.lab()
		if err != nil {
			return err
		}
		bin, err := self()
		if err != nil {
			return err
		}
		if err := l.Up(cmd.Context(), lab.UpOptions{Binary: bin, StartDirectors: directors, StartBackends: backends, StartAgents: agents}); err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), `lab %q is up; state in %s
  eval "$(%s lab env%s)"
  ip netns exec %sclient %s status
`, o.prefix, l.Dir, bin, o.flagsIfNotDefault(), o.prefix, bin)
		return err
	}
	return cmd
}

// flagsIfNotDefault repeats --prefix and --dir when they differ from the defaults.
func (o *labOpts) flagsIfNotDefault() string {
	s := ""
	if o.prefix != lab.DefaultPrefix {
		s += " --prefix " + o.prefix
	}
	if o.dir != lab.DefaultDir {
		s += " --dir " + o.dir
	}
	return s
}

func labDownCmd(o *labOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop the lab's processes and delete its namespaces (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.lab()
			if err != nil {
				return err
			}
			// Not cmd.Context(): a second Ctrl-C must not leave half a lab behind.
			return l.Down(context.WithoutCancel(cmd.Context()))
		},
	}
}

func labEnvCmd(o *labOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "env",
		Short: `Print the CLI's settings for an admin of the lab, for eval "$(raftlb lab env)"`,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.lab()
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), l.Env())
			return err
		},
	}
}

func labDemoCmd(o *labOpts) *cobra.Command {
	var down bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Bring the lab up and walk through replication and a leader failover",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&down, "down", false, "tear the lab down when the demo ends")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		l, err := o.lab()
		if err != nil {
			return err
		}
		bin, err := self()
		if err != nil {
			return err
		}
		err = l.Demo(cmd.Context(), bin, cmd.OutOrStdout())
		if down {
			if derr := l.Down(context.WithoutCancel(cmd.Context())); err == nil {
				err = derr
			}
		}
		return err
	}
	return cmd
}

func labBackendCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:    "backend",
		Short:  "Serve the lab backend (HTTP on :80 answering its name, echo on :7)",
		Hidden: true,
		Args:   cobra.NoArgs,
	}
	cmd.Flags().StringVar(&name, "name", "", "name the backend answers with, e.g. rs1")
	_ = cmd.MarkFlagRequired("name")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return lab.RunBackend(cmd.Context(), name)
	}
	return cmd
}
