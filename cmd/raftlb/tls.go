package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/spf13/cobra"

	"github.com/raftlb/raftlb/server/pki"
)

func newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Development PKI",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(tlsInitCmd())
	return cmd
}

func tlsInitCmd() *cobra.Command {
	var (
		dir       string
		ips, dns  []string
		directors []string
		agents    []string
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make a development CA and certificates for every role",
		Long: `Write a development CA (ca.pem) and certificates with their keys into --dir:
director.pem, admin.pem, reader.pem, director-<id>.pem per --director and agent-<id>.pem
per --agent. The role is the certificate's Organizational Unit, the identity its Common
Name. SANs hold the lab addresses, 127.0.0.1 and localhost, plus --ip and --dns.
Existing files are overwritten.`,
		Example: "  raftlb tls init --dir /etc/raftlb/tls --ip 192.0.2.1 --director d1 --agent rs1=192.0.2.11,203.0.113.11",
		Args:    cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&dir, "dir", "", "directory to write into")
	fs.StringSliceVar(&ips, "ip", nil, "extra IP SAN for every certificate (repeatable)")
	fs.StringSliceVar(&dns, "dns", nil, "extra DNS SAN for every certificate (repeatable)")
	fs.StringSliceVar(&directors, "director", nil, "director id to issue its own certificate for (repeatable)")
	fs.StringArrayVar(&agents, "agent", nil, "agent as ID=IP,IP: its certificate may register only those addresses (repeatable)")
	_ = cmd.MarkFlagRequired("dir")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var o pki.InitOptions
		for _, s := range ips {
			ip := net.ParseIP(s)
			if ip == nil {
				return usagef("--ip: %q is not an IP address", s)
			}
			o.IPs = append(o.IPs, ip)
		}
		o.DNSNames = dns
		o.Directors = directors
		for _, a := range agents {
			id, list, ok := strings.Cut(a, "=")
			if !ok || id == "" || list == "" {
				return usagef("--agent: %q is not ID=IP,IP", a)
			}
			ac := pki.AgentCert{ID: id}
			for _, s := range strings.Split(list, ",") {
				ip := net.ParseIP(strings.TrimSpace(s))
				if ip == nil {
					return usagef("--agent: %q in %q is not an IP address", s, a)
				}
				ac.IPs = append(ac.IPs, ip)
			}
			o.Agents = append(o.Agents, ac)
		}
		if err := pki.Init(dir, o); err != nil {
			return err
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "wrote CA and certificates to %s\n", dir)
		return err
	}
	return cmd
}
