package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raftlb/raftlb/deploy/lab"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// The health test's check: fast, so the test is quick, with the margins a loaded CI
// machine needs on top of interval×fall and interval×rise.
const (
	healthInterval = 500 * time.Millisecond
	healthFall     = 3
	healthRise     = 2
	healthMargin   = 4 * time.Second
)

// TestHealthChecks stops the lab backend on one realserver of an HTTP-checked DR
// service: it is marked down within interval×fall (plus a margin) and new client
// connections avoid it; started again, it is back within interval×rise and takes
// connections again. A realserver whose backend runs but which no longer accepts the
// VIP's traffic is down too: DR probes take the forwarding path. /metrics shows the
// verdicts.
func TestHealthChecks(t *testing.T) {
	t.Parallel()
	l := upLab(t, "rlbhc-", lab.UpOptions{StartDirectors: true, StartBackends: true, StartAgents: true})
	l.waitAgentsRegistered()
	l.mustCLI("service", "add", "--vip", vipDR, "--port", "80", "--scheduler", "rr",
		"--health", "http", "--health-path", "/", "--health-interval", healthInterval.String(),
		"--health-timeout", "300ms", "--rise", fmt.Sprint(healthRise), "--fall", fmt.Sprint(healthFall))
	for _, name := range realservers {
		h, err := lab.LookupHost(name)
		if err != nil {
			t.Fatal(err)
		}
		l.mustCLI("realserver", "add", "--vip", vipDR, "--port", "80", "--address", h.Front.String(), "--method", "dr")
	}
	rs2, err := lab.LookupHost("rs2")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every realserver is up", func() error {
		return l.wantHealth(map[string]raftlbv1.HealthState{})
	})
	l.waitGETs(vipDR, realservers)

	stopped := time.Now()
	if err := l.Signal("backend-rs2", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	l.waitProcessGone("backend-rs2")
	eventually(t, healthInterval*healthFall+healthMargin, "rs2 is marked down", func() error {
		return l.wantHealth(map[string]raftlbv1.HealthState{rs2.Front.String(): raftlbv1.HealthState_HEALTH_STATE_DOWN})
	})
	t.Logf("rs2 down %v after its backend stopped", time.Since(stopped).Round(10*time.Millisecond))
	for i := range 12 {
		name, err := l.get(vipDR)
		if err != nil {
			t.Fatalf("GET %d with rs2 down: %v", i, err)
		}
		if name == "rs2" {
			t.Fatalf("GET %d reached rs2, which is down", i)
		}
	}

	started := time.Now()
	if _, err := l.Start("rs2", "backend-rs2", append([]string{raftlbBin}, lab.BackendArgs("rs2")...)...); err != nil {
		t.Fatal(err)
	}
	eventually(t, healthInterval*healthRise+healthMargin, "rs2 is up again", func() error {
		return l.wantHealth(map[string]raftlbv1.HealthState{})
	})
	t.Logf("rs2 up %v after its backend started", time.Since(started).Round(10*time.Millisecond))
	l.waitGETs(vipDR, realservers)

	// The probes of a DR realserver go to the VIP through its forwarding path: one that
	// answers on its own address but no longer takes the VIP's traffic (its agent gone
	// and the VIP off its lo) is down, with its backend running.
	rs3, err := lab.LookupHost("rs3")
	if err != nil {
		t.Fatal(err)
	}
	l.kill(lab.AgentName("rs3"))
	if _, err := l.Exec(l.ctx, "rs3", "ip", "addr", "del", vipDR+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	eventually(t, healthInterval*healthFall+healthMargin, "rs3, without the VIP, is marked down", func() error {
		return l.wantHealth(map[string]raftlbv1.HealthState{rs3.Front.String(): raftlbv1.HealthState_HEALTH_STATE_DOWN})
	})
	if _, err := l.StartAgent(raftlbBin, "rs3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, healthInterval*healthRise+healthMargin+5*time.Second, "rs3, its VIP restored by the agent, is up", func() error {
		return l.wantHealth(map[string]raftlbv1.HealthState{})
	})

	metrics := l.metrics("d1")
	want := fmt.Sprintf(`raftlb_realserver_health{port="80",proto="tcp",realserver=%q,rport="80",state="up",vip=%q} 1`, rs2.Front, vipDR)
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics of d1 lacks %s", want)
	}
	for _, name := range []string{"raftlb_realserver_probe_state", "raftlb_service_packets_total", "raftlb_realserver_active_connections", "raftlb_dataplane_verdicts_total"} {
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics of d1 lacks %s", name)
		}
	}
}

// TestHealthChecksTUN: the probes of a TUN realserver go to the VIP through the
// tunnel, encapsulated by the director's dataplane, so one that answers on its own
// address but no longer takes the VIP's traffic (its agent gone and the VIP off its
// lo) is down within interval×fall, long before its agent's silence would count.
func TestHealthChecksTUN(t *testing.T) {
	t.Parallel()
	l := upLab(t, "rlbht-", lab.UpOptions{StartDirectors: true, StartBackends: true, StartAgents: true})
	l.waitAgentsRegistered()
	l.mustCLI("service", "add", "--vip", vipTUN, "--port", "80", "--scheduler", "rr",
		"--health", "http", "--health-path", "/", "--health-interval", healthInterval.String(),
		"--health-timeout", "300ms", "--rise", fmt.Sprint(healthRise), "--fall", fmt.Sprint(healthFall))
	for _, name := range realservers {
		h, err := lab.LookupHost(name)
		if err != nil {
			t.Fatal(err)
		}
		l.mustCLI("realserver", "add", "--vip", vipTUN, "--port", "80", "--address", h.Front.String(), "--method", "tun")
	}
	eventually(t, 30*time.Second, "every TUN realserver is up", func() error {
		return l.wantHealthOf(vipTUN, map[string]raftlbv1.HealthState{})
	})
	l.waitGETs(vipTUN, realservers)

	rs3, err := lab.LookupHost("rs3")
	if err != nil {
		t.Fatal(err)
	}
	l.kill(lab.AgentName("rs3"))
	if _, err := l.Exec(l.ctx, "rs3", "ip", "addr", "del", vipTUN+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	broken := time.Now()
	eventually(t, healthInterval*healthFall+healthMargin, "rs3, without the VIP, is marked down", func() error {
		return l.wantHealthOf(vipTUN, map[string]raftlbv1.HealthState{rs3.Front.String(): raftlbv1.HealthState_HEALTH_STATE_DOWN})
	})
	t.Logf("rs3 down %v after its VIP went", time.Since(broken).Round(10*time.Millisecond))
	if name, err := l.get(rs3.Front.String()); err != nil || name != "rs3" {
		t.Fatalf("rs3's own address: answered by %q (%v), want rs3", name, err)
	}
	if _, err := l.StartAgent(raftlbBin, "rs3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, healthInterval*healthRise+healthMargin+5*time.Second, "rs3, its VIP restored by the agent, is up", func() error {
		return l.wantHealthOf(vipTUN, map[string]raftlbv1.HealthState{})
	})
}

// wantHealth checks the DR service's replicated verdicts: the realservers named in
// want have that state, every other one is up.
func (l *testLab) wantHealth(want map[string]raftlbv1.HealthState) error {
	return l.wantHealthOf(vipDR, want)
}

// wantHealthOf is wantHealth for the service on vip, port 80.
func (l *testLab) wantHealthOf(vip string, want map[string]raftlbv1.HealthState) error {
	var r raftlbv1.GetServiceResponse
	if err := l.getJSON(&r, "service", "get", "--vip", vip, "--port", "80"); err != nil {
		return err
	}
	for _, rs := range r.GetService().GetRealservers() {
		w, ok := want[rs.GetAddress()]
		if !ok {
			w = raftlbv1.HealthState_HEALTH_STATE_UP
		}
		if rs.GetHealth() != w {
			return fmt.Errorf("realserver %s is %s, want %s", rs.GetAddress(), rs.GetHealth(), w)
		}
	}
	return nil
}

// get sends one GET to vip from the client on a new connection and returns the
// realserver's name.
func (l *testLab) get(vip string) (string, error) {
	client := &http.Client{
		Transport: &http.Transport{DialContext: l.DialContext("client"), DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	resp, err := client.Get("http://" + vip + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// waitGETs polls GETs through vip until each of names has answered.
func (l *testLab) waitGETs(vip string, names []string) {
	l.tb.Helper()
	seen := make(map[string]bool)
	eventually(l.tb, 20*time.Second, "GETs through "+vip+" reach "+strings.Join(names, ", "), func() error {
		name, err := l.get(vip)
		if err != nil {
			return err
		}
		if !slices.Contains(names, name) {
			return fmt.Errorf("answered by %q", name)
		}
		seen[name] = true
		if len(seen) < len(names) {
			return fmt.Errorf("answers so far %v", seen)
		}
		return nil
	})
}

// metrics returns director host's /metrics page, fetched from the client.
func (l *testLab) metrics(host string) string {
	l.tb.Helper()
	h, err := lab.LookupHost(host)
	if err != nil {
		l.tb.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: l.DialContext("client")}, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/metrics", h.Front, lab.MetricsPort), nil)
	if err != nil {
		l.tb.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		l.tb.Fatalf("get /metrics of %s: %v", host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		l.tb.Fatalf("read /metrics of %s: %v", host, err)
	}
	return string(b)
}
