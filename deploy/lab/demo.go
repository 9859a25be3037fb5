package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The demo's virtual services, one per forwarding method, on port 80 of the lab
// backend: DR and TUN reach the realservers by their front addresses, NAT by their
// inside ones through the gateway address.
var demoServices = []struct{ vip, method string }{
	{"198.51.100.10", "dr"},
	{"198.51.100.20", "tun"},
	{"198.51.100.30", "nat"},
}

// demoGETs is how many GETs the demo sends through each VIP.
const demoGETs = 6

// Demo brings the lab up and walks through what works so far: a Raft leader among
// d1, d2 and w1; a DR, a TUN and a NAT service written through one director and read
// back from another; the agents configuring the realservers; HTTP from the client
// through each VIP reaching rs1..rs3, the connection table and the counters; the
// leader killed while the survivors elect a new one and keep the services; and the
// owner of a VIP killed while a client's connection through it keeps working. Every step
// prints the command a user would type and its output. The lab is left up.
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
	if err := l.demoServices(ctx, w, bin, step, all); err != nil {
		return err
	}
	if err := l.demoTraffic(ctx, w, bin, step); err != nil {
		return err
	}
	if err := l.demoLeaderFailover(ctx, w, bin, step, all, leader); err != nil {
		return err
	}
	if err := l.demoDirectorFailover(ctx, w, bin, step); err != nil {
		return err
	}
	step("done; the lab stays up (raftlb lab down removes it)")
	fmt.Fprintf(w, "logs: %s\n", filepath.Join(l.Dir, "logs"))
	return nil
}

// demoServices creates the NAT gateway address and the three services through d2,
// reads them back everywhere and waits for the agents.
func (l *Lab) demoServices(ctx context.Context, w io.Writer, bin string, step func(string, ...any), all []Host) error {
	step("declaring the NAT gateway, which NAT realservers route their replies through")
	if err := l.demoCLI(ctx, w, bin, "d2", "address", "set", "--address", Gateway.String(), "--kind", "nat-gateway"); err != nil {
		return err
	}
	step("creating a DR, a TUN and a NAT service through d2 (a write at any director reaches the leader)")
	for _, svc := range demoServices {
		if err := l.demoCLI(ctx, w, bin, "d2", "service", "add", "--vip", svc.vip, "--port", "80", "--proto", "tcp",
			"--scheduler", "rr", "--health", "http", "--health-interval", "1s", "--health-timeout", "500ms"); err != nil {
			return err
		}
		for _, rs := range HostsWithRole(RoleRealserver) {
			addr := rs.Front
			if svc.method == "nat" {
				addr = rs.Inside
			}
			if err := l.demoCLI(ctx, w, bin, "d2", "realserver", "add", "--vip", svc.vip, "--port", "80", "--proto", "tcp",
				"--address", addr.String(), "--weight", "100", "--method", svc.method); err != nil {
				return err
			}
		}
	}
	step("reading them back from every director and the witness")
	for _, h := range all {
		if err := l.demoCLI(ctx, w, bin, h.Name, "service", "list"); err != nil {
			return err
		}
	}

	step("the agents configure each realserver: the VIP on lo with ARP for it fenced (DR, TUN), decapsulation (TUN), the return route (NAT)")
	for _, svc := range demoServices {
		if svc.method == "nat" {
			continue // a NAT realserver holds no VIP: its return route is in the agent's report
		}
		if err := l.waitAgentsApplied(ctx, bin, svc.vip); err != nil {
			return err
		}
	}
	if err := l.demoCLI(ctx, w, bin, "d1", "agent", "list"); err != nil {
		return err
	}
	fmt.Fprintf(w, "$ ip netns exec %s ip -br addr show dev lo\n", l.NS("rs1"))
	out, err := l.Exec(ctx, "rs1", "ip", "-br", "addr", "show", "dev", "lo")
	_, _ = w.Write(out)
	if err != nil {
		return err
	}
	step("the owner of the VIPs probes every realserver (HTTP GET /) and replicates the verdicts")
	return l.waitHealthy(ctx, w, bin)
}

// waitHealthy polls `service list -o json` until every realserver is up.
func (l *Lab) waitHealthy(ctx context.Context, w io.Writer, bin string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for {
		out, err := l.CLI(ctx, bin, "d1", "service", "list", "-o", "json", "--timeout", "2s")
		if err == nil {
			var list struct {
				Services []struct {
					Realservers []struct {
						Health string `json:"health"`
					} `json:"realservers"`
				} `json:"services"`
			}
			if err = json.Unmarshal(out, &list); err == nil {
				up, all := 0, 0
				for _, s := range list.Services {
					for _, rs := range s.Realservers {
						all++
						if rs.Health == "HEALTH_STATE_UP" {
							up++
						}
					}
				}
				if up == all {
					fmt.Fprintf(w, "all %d realservers up after %v\n", all, time.Since(start).Round(100*time.Millisecond))
					return nil
				}
				err = fmt.Errorf("%d of %d realservers up", up, all)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for health verdicts: %w (last: %w)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// demoTraffic sends GETs from the client through each VIP and shows the connection
// table, the counters and the health verdicts.
func (l *Lab) demoTraffic(ctx context.Context, w io.Writer, bin string, step func(string, ...any)) error {
	step("HTTP from the client through each VIP: the director forwards, the realservers answer the client directly (DR, TUN) or through the gateway (NAT)")
	client := &http.Client{
		Transport: &http.Transport{DialContext: l.DialContext("client"), DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	for _, svc := range demoServices {
		url := "http://" + svc.vip + "/"
		if err := l.waitGET(ctx, client, url); err != nil {
			return err
		}
		fmt.Fprintf(w, "GET %s from %s, %d times (%s):\n", url, l.NS("client"), demoGETs, svc.method)
		var names []string
		for range demoGETs {
			name, err := demoGET(ctx, client, url)
			if err != nil {
				return err
			}
			names = append(names, name)
		}
		fmt.Fprintln(w, strings.Join(names, " "))
	}

	step("the connection table of d1 (its own connections and those replicated from the owners of other VIPs) and its counters per service and realserver")
	if err := l.demoCLI(ctx, w, bin, "d1", "conns", "list"); err != nil {
		return err
	}
	if err := l.demoCLI(ctx, w, bin, "d1", "service", "list"); err != nil {
		return err
	}
	return l.demoCLI(ctx, w, bin, "d1", "service", "get", "--vip", demoServices[0].vip, "--port", "80")
}

// demoLeaderFailover kills the Raft leader and shows the survivors keep the services.
func (l *Lab) demoLeaderFailover(ctx context.Context, w io.Writer, bin string, step func(string, ...any), all []Host, leader string) error {
	step("killing the Raft leader %s with SIGKILL", leader)
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
	step("the services survived the failover")
	return l.demoCLI(ctx, w, bin, survivors[0].Name, "service", "list")
}

// demoGET sends one GET and returns the body, trimmed: the realserver's name.
func demoGET(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", url, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// waitGET polls url until a GET succeeds (the realservers' neighbours may still be
// resolving on the director).
func (l *Lab) waitGET(ctx context.Context, client *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := demoGET(ctx, client, url)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %w)", url, ctx.Err(), err)
		case <-tick.C:
		}
	}
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
