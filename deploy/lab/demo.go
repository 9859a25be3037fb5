package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// demoVIP is the virtual service the demo creates.
const demoVIP = "198.51.100.10"

// Demo brings the lab up and walks through what works so far: a Raft leader among
// d1, d2 and w1, a service written through one director and read back from another,
// and the leader killed while the survivors elect a new one and keep the service.
// Every step prints the command a user would type and its output. The lab is left up.
func (l *Lab) Demo(ctx context.Context, bin string, w io.Writer) error {
	step := func(format string, a ...any) { fmt.Fprintf(w, "\n== "+format+"\n", a...) }

	step("building the lab and starting d1, d2, the witness w1, the backends and the agents")
	if err := l.Up(ctx, UpOptions{Binary: bin, StartDirectors: true, StartBackends: true, StartAgents: true}); err != nil {
		return err
	}
	fmt.Fprintf(w, "state in %s; the CLI runs in %s with:\n%s", l.Dir, l.NS("client"), l.Env())

	step("waiting for a Raft leader")
	all := HostsWithRole(RoleDirector, RoleWitness)
	leader, err := l.waitLeader(ctx, bin, all, "")
	if err != nil {
		return err
	}
	if err := l.demoCLI(ctx, w, bin, "d1", "status"); err != nil {
		return err
	}

	step("creating a service through d2 (a write at any director reaches the leader)")
	if err := l.demoCLI(ctx, w, bin, "d2", "service", "add", "--vip", demoVIP, "--port", "80", "--proto", "tcp", "--scheduler", "mh"); err != nil {
		return err
	}
	for _, rs := range HostsWithRole(RoleRealserver) {
		if err := l.demoCLI(ctx, w, bin, "d2", "realserver", "add", "--vip", demoVIP, "--port", "80", "--proto", "tcp",
			"--address", rs.Front.String(), "--weight", "100", "--method", "dr"); err != nil {
			return err
		}
	}
	step("reading it back from every director and the witness")
	for _, h := range all {
		if err := l.demoCLI(ctx, w, bin, h.Name, "service", "list"); err != nil {
			return err
		}
	}

	step("the agents put the VIP on each realserver's lo, with ARP for it fenced")
	if err := l.waitAgentsApplied(ctx, bin, demoVIP); err != nil {
		return err
	}
	if err := l.demoCLI(ctx, w, bin, "d1", "realserver", "list", "--vip", demoVIP, "--port", "80"); err != nil {
		return err
	}
	fmt.Fprintf(w, "$ ip netns exec %s ip -br addr show dev lo\n", l.NS("rs1"))
	out, err := l.Exec(ctx, "rs1", "ip", "-br", "addr", "show", "dev", "lo")
	_, _ = w.Write(out)
	if err != nil {
		return err
	}

	step("killing the leader %s with SIGKILL", leader)
	fmt.Fprintf(w, "$ kill -KILL $(cat %s)\n", l.pidFile(leader))
	if err := l.Signal(leader, syscall.SIGKILL); err != nil {
		return err
	}
	var survivors []Host
	for _, h := range all {
		if h.Name != leader {
			survivors = append(survivors, h)
		}
	}
	start := time.Now()
	next, err := l.waitLeader(ctx, bin, survivors, leader)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s leads after %v\n", next, time.Since(start).Round(10*time.Millisecond))
	if err := l.demoCLI(ctx, w, bin, survivors[0].Name, "status"); err != nil {
		return err
	}
	step("the service survived the failover")
	if err := l.demoCLI(ctx, w, bin, survivors[0].Name, "service", "list"); err != nil {
		return err
	}
	step("done; the lab stays up (raftlb lab down removes it)")
	fmt.Fprintf(w, "logs: %s\n", filepath.Join(l.Dir, "logs"))
	return nil
}

// cliArgs returns the CLI's connection flags for the admin identity against host.
func (l *Lab) cliArgs(host string) ([]string, error) {
	h, err := LookupHost(host)
	if err != nil {
		return nil, err
	}
	tls := l.TLSDir()
	return []string{
		"--server", netip.AddrPortFrom(h.Front, APIPort).String(),
		"--ca", filepath.Join(tls, "ca.pem"),
		"--cert", filepath.Join(tls, "admin.pem"),
		"--key", filepath.Join(tls, "admin-key.pem"),
	}, nil
}

// CLI runs `<bin> <args> --server <host's API> …` from the client namespace as admin.
func (l *Lab) CLI(ctx context.Context, bin, host string, args ...string) ([]byte, error) {
	conn, err := l.cliArgs(host)
	if err != nil {
		return nil, err
	}
	return l.Exec(ctx, "client", append(append([]string{bin}, args...), conn...)...)
}

// demoCLI prints and runs one CLI command. The printed form is what a user types after
// eval "$(raftlb lab env)", which already points at d1.
func (l *Lab) demoCLI(ctx context.Context, w io.Writer, bin, host string, args ...string) error {
	shown := "raftlb " + strings.Join(args, " ")
	if host != "d1" {
		h, _ := LookupHost(host)
		shown += " --server " + netip.AddrPortFrom(h.Front, APIPort).String()
	}
	fmt.Fprintf(w, "$ ip netns exec %s %s\n", l.NS("client"), shown)
	out, err := l.CLI(ctx, bin, host, args...)
	_, _ = w.Write(out)
	return err
}

// waitLeader polls `status -o json` on hosts until one reports a leader other than
// not, and returns that leader's id.
func (l *Lab) waitLeader(ctx context.Context, bin string, hosts []Host, not string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		for _, h := range hosts {
			out, err := l.CLI(ctx, bin, h.Name, "status", "-o", "json", "--timeout", "2s")
			if err != nil {
				last = err
				continue
			}
			var st struct {
				LeaderID string `json:"leaderId"`
			}
			if err := json.Unmarshal(out, &st); err != nil {
				last = fmt.Errorf("parse status from %s: %w", h.Name, err)
				continue
			}
			if st.LeaderID != "" && st.LeaderID != not {
				return st.LeaderID, nil
			}
			last = errors.New("no leader yet")
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for leader: %w (last: %w)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// waitAgentsApplied polls `agent list -o json` until every realserver's agent reports
// vip applied.
func (l *Lab) waitAgentsApplied(ctx context.Context, bin, vip string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		last = l.agentsApplied(ctx, bin, vip)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the agents: %w (last: %w)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func (l *Lab) agentsApplied(ctx context.Context, bin, vip string) error {
	out, err := l.CLI(ctx, bin, "d1", "agent", "list", "-o", "json", "--timeout", "2s")
	if err != nil {
		return err
	}
	var list struct {
		Agents []struct {
			ID   string `json:"id"`
			Vips []struct {
				Vip     string `json:"vip"`
				Applied bool   `json:"applied"`
			} `json:"vips"`
		} `json:"agents"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return fmt.Errorf("parse agent list: %w", err)
	}
	applied := make(map[string]bool)
	for _, a := range list.Agents {
		for _, v := range a.Vips {
			if v.Vip == vip && v.Applied {
				applied[a.ID] = true
			}
		}
	}
	for _, rs := range HostsWithRole(RoleRealserver) {
		if !applied[rs.Name] {
			return fmt.Errorf("agent %s has not applied %s yet", rs.Name, vip)
		}
	}
	return nil
}
