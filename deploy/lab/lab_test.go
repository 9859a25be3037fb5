package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// newTestLab returns a lab for prefix whose teardown is registered with t.Cleanup, and
// whose process logs are printed if the test fails.
func newTestLab(t *testing.T, prefix string) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the lab creates network namespaces")
	}
	l, err := New(prefix, t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	l.StopTimeout = 2 * time.Second
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, l)
		}
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return l
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func dumpLogs(t *testing.T, l *Lab) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(l.logDir(), "*.log"))
	for _, p := range logs {
		t.Logf("--- %s:\n%s", filepath.Base(p), tail(p, 30))
	}
}

// eventually polls f until it succeeds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval, bounded by the deadline
	}
}

// waitDone fails t unless done closes soon: Down returns once its processes have
// exited, so only reaping remains.
func waitDone(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s survived Down", what)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// self returns the test binary, which TestMain turns into the backend and friends.
func self(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startTestBackend starts the lab backend in host by re-executing the test binary.
func startTestBackend(t *testing.T, l *Lab, host string) *Proc {
	t.Helper()
	p, err := l.Start(host, "backend-"+host, append([]string{self(t)}, BackendArgs(host)...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitTCP(testCtx(t), "client", mustAddr(t, host, BackendHTTPPort), p); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustAddr(t *testing.T, host string, port int) string {
	t.Helper()
	h, err := LookupHost(host)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(h.Front.String(), fmt.Sprint(port))
}

func httpGet(ctx context.Context, l *Lab, from, url string) (string, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: l.DialContext(from), DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// echo sends msg over network to addr from host and returns what comes back.
func echo(ctx context.Context, l *Lab, from, network, addr, msg string) (string, error) {
	c, err := l.DialContext(from)(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return "", err
	}
	return string(buf), nil
}

func ping(ctx context.Context, l *Lab, from, to string) error {
	_, err := l.Exec(ctx, from, "ping", "-c", "1", "-W", "1", to)
	return err
}

func nsExists(l *Lab, host string) bool {
	_, err := os.Lstat(filepath.Join(netnsDir, l.NS(host)))
	return err == nil
}

func TestLab(t *testing.T) {
	t.Parallel()
	l := newTestLab(t, "rlblt-")
	ctx := testCtx(t)

	if err := l.Build(ctx); err != nil {
		t.Fatal(err)
	}
	// Build again over a built lab: it must tear down and rebuild, not fail.
	if err := l.Build(ctx); err != nil {
		t.Fatalf("second Build: %v", err)
	}

	t.Run("namespaces and addresses", func(t *testing.T) {
		for _, host := range namespaceHosts() {
			if !nsExists(l, host) {
				t.Errorf("namespace %s missing", l.NS(host))
			}
		}
		for _, h := range Hosts() {
			out, err := l.Exec(ctx, h.Name, "ip", "-o", "addr", "show")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line) // "2: eth0    inet 192.0.2.1/24 brd … "
				got = append(got, f[1]+" "+f[2]+" "+f[3])
			}
			want := []string{"lo inet 127.0.0.1/8", "eth0 inet " + h.Front.String() + "/24"}
			if h.HasInside() {
				want = append(want, "eth1 inet "+h.Inside.String()+"/24")
			}
			slices.Sort(got)
			slices.Sort(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s addresses (-want +got):\n%s", h.Name, diff)
			}
		}
	})

	t.Run("MACs", func(t *testing.T) {
		out, err := l.Exec(ctx, "d1", "cat", "/sys/class/net/eth1/address")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.TrimSpace(string(out)), "02:00:cb:00:71:01"; got != want {
			t.Errorf("d1 eth1 MAC = %s, want %s", got, want)
		}
	})

	t.Run("client route to VIPs", func(t *testing.T) {
		out, err := l.Exec(ctx, "client", "ip", "route", "get", "198.51.100.7")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "dev eth0") || strings.Contains(string(out), " via ") {
			t.Errorf("route to a VIP is not on-link on eth0: %s", out)
		}
	})

	t.Run("front and inside segments", func(t *testing.T) {
		eventually(t, 10*time.Second, "client pings d1 on the front", func() error { return ping(ctx, l, "client", "192.0.2.1") })
		eventually(t, 10*time.Second, "d1 pings rs1 on the inside", func() error { return ping(ctx, l, "d1", "203.0.113.11") })
		if err := ping(ctx, l, "client", "203.0.113.11"); err == nil {
			t.Error("client reached the inside segment; it must not")
		}
	})

	backend := startTestBackend(t, l, "rs1")

	t.Run("backend", func(t *testing.T) {
		body, err := httpGet(ctx, l, "client", "http://192.0.2.11/")
		if err != nil {
			t.Fatal(err)
		}
		if body != "rs1\n" {
			t.Errorf("GET / = %q, want %q", body, "rs1\n")
		}
		for _, network := range []string{"tcp4", "udp4"} {
			got, err := echo(ctx, l, "client", network, "192.0.2.11:7", "hello "+network)
			if err != nil {
				t.Fatalf("%s echo: %v", network, err)
			}
			if got != "hello "+network {
				t.Errorf("%s echo = %q", network, got)
			}
		}
	})

	t.Run("backend answers on a VIP on lo", func(t *testing.T) {
		// Direct routing by hand: the VIP on rs1's lo, and the client's neighbour entry
		// for the VIP pointing at rs1's MAC. Replies must come from the VIP, or the
		// client's connected sockets would drop them.
		const vip = "198.51.100.7"
		rs1, _ := LookupHost("rs1")
		if _, err := l.Exec(ctx, "rs1", "ip", "addr", "add", vip+"/32", "dev", "lo"); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Exec(ctx, "client", "ip", "neigh", "replace", vip, "lladdr", MAC(rs1.Front), "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
		body, err := httpGet(ctx, l, "client", "http://"+vip+"/")
		if err != nil || body != "rs1\n" {
			t.Errorf("GET via VIP = %q, %v", body, err)
		}
		if got, err := echo(ctx, l, "client", "udp4", vip+":7", "via vip"); err != nil || got != "via vip" {
			t.Errorf("udp echo via VIP = %q, %v", got, err)
		}
	})

	t.Run("disconnect and reconnect", func(t *testing.T) {
		eventually(t, 10*time.Second, "d1 pings d2 inside", func() error { return ping(ctx, l, "d1", "203.0.113.2") })
		if err := l.Disconnect(ctx, "d1", InsideIface); err != nil {
			t.Fatal(err)
		}
		if err := ping(ctx, l, "d1", "203.0.113.2"); err == nil {
			t.Error("d1 reached d2 inside while disconnected")
		}
		if err := ping(ctx, l, "client", "192.0.2.1"); err != nil {
			t.Errorf("client lost d1's front while only the inside was cut: %v", err)
		}
		if err := l.Reconnect(ctx, "d1", InsideIface); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "d1 pings d2 after reconnect", func() error { return ping(ctx, l, "d1", "203.0.113.2") })
	})

	t.Run("down", func(t *testing.T) {
		if err := l.Down(ctx); err != nil {
			t.Fatal(err)
		}
		waitDone(t, backend.Done(), "backend")
		if err := backend.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
		}
		for _, host := range namespaceHosts() {
			if nsExists(l, host) {
				t.Errorf("namespace %s still exists", l.NS(host))
			}
		}
		if running, err := l.Running(); err != nil || len(running) != 0 {
			t.Errorf("Running() = %v, %v; want none", running, err)
		}
		if err := l.Down(ctx); err != nil {
			t.Errorf("second Down: %v", err)
		}
	})
}

func TestDownAfterCrash(t *testing.T) {
	t.Parallel()
	first := newTestLab(t, "rlblc-")
	ctx := testCtx(t)
	if err := first.Build(ctx); err != nil {
		t.Fatal(err)
	}
	backend := startTestBackend(t, first, "rs2")
	stubborn, err := first.Start("rs3", "stubborn", self(t), "stubborn")
	if err != nil {
		t.Fatal(err)
	}
	if err := first.WaitTCP(ctx, "client", mustAddr(t, "rs3", stubbornPort), stubborn); err != nil {
		t.Fatal(err)
	}

	// A process nobody recorded, started in the client namespace in its own session:
	// only the namespace sweep can find it.
	stray := exec.Command("ip", append([]string{"netns", "exec", first.NS("client"), self(t)}, BackendArgs("stray")...)...)
	stray.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan struct{})
	go func() { _ = stray.Wait(); close(strayDone) }()
	t.Cleanup(func() { _ = stray.Process.Kill() })
	if err := first.WaitTCP(ctx, "client", mustAddr(t, "client", BackendHTTPPort), nil); err != nil {
		t.Fatal(err)
	}

	// A pid file whose pid now belongs to an unrelated process (a different start
	// time): Down must leave that process alone.
	decoy := exec.Command("sleep", "300")
	decoy.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = decoy.Process.Kill(); _ = decoy.Wait() })
	st, err := readStat(decoy.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := writePidFile(first.pidFile("recycled"), pidRecord{Pid: decoy.Process.Pid, Start: st.start + 1, Host: "rs3"}); err != nil {
		t.Fatal(err)
	}

	// The crash: the first Lab value is dropped; a new one only knows prefix and dir.
	second, err := New(first.Prefix, first.Dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	second.StopTimeout = 300 * time.Millisecond // then SIGKILL for the stubborn one
	if err := second.Down(ctx); err != nil {
		t.Fatal(err)
	}
	waitDone(t, backend.Done(), "recorded backend")
	waitDone(t, strayDone, "unrecorded process")
	waitDone(t, stubborn.Done(), "process ignoring SIGTERM")
	if st, err := readStat(decoy.Process.Pid); err != nil || st.zombie {
		t.Error("Down killed a process whose pid only looked recorded")
	}
	for _, host := range namespaceHosts() {
		if nsExists(second, host) {
			t.Errorf("namespace %s still exists", second.NS(host))
		}
	}
	if left, _ := filepath.Glob(filepath.Join(second.pidDir(), "*")); len(left) != 0 {
		t.Errorf("pid files left: %v", left)
	}
}

func TestUp(t *testing.T) {
	t.Parallel()
	l := newTestLab(t, "rlblu-")
	ctx := testCtx(t)
	var certDir string
	err := l.Up(ctx, UpOptions{
		Binary: self(t),
		Certs: func(_ context.Context, dir string) error {
			certDir = dir
			return os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("test\n"), 0o600)
		},
		StartDirectors: true,
		StartBackends:  true,
		StartAgents:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if certDir != l.TLSDir() {
		t.Errorf("Certs got dir %q, want %q", certDir, l.TLSDir())
	}
	running, err := l.Running()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"agent-rs1", "agent-rs2", "agent-rs3", "backend-rs1", "backend-rs2", "backend-rs3", "d1", "d2", "w1"}
	if diff := cmp.Diff(want, running); diff != "" {
		t.Errorf("Running() (-want +got):\n%s", diff)
	}
	for _, rs := range []string{"rs1", "rs2", "rs3"} {
		body, err := httpGet(ctx, l, "client", "http://"+mustAddr(t, rs, BackendHTTPPort)+"/")
		if err != nil || body != rs+"\n" {
			t.Errorf("GET %s = %q, %v", rs, body, err)
		}
	}
	// The fake director prints its flags: check they reached the process intact.
	wantArgs, err := l.DirectorArgs("w1")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "w1 logs its flags", func() error {
		got, err := firstLine(filepath.Join(l.logDir(), "w1.log"))
		if err != nil {
			return err
		}
		if want := "args: " + strings.Join(wantArgs[1:], " "); got != want {
			return fmt.Errorf("w1 got %q, want %q", got, want)
		}
		return nil
	})
	wantArgs, err = l.AgentArgs("rs2")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "agent-rs2 logs its flags", func() error {
		got, err := firstLine(filepath.Join(l.logDir(), AgentName("rs2")+".log"))
		if err != nil {
			return err
		}
		if want := "args: " + strings.Join(wantArgs[1:], " "); got != want {
			return fmt.Errorf("agent-rs2 got %q, want %q", got, want)
		}
		return nil
	})
	key, err := os.ReadFile(l.gossipKeyFile())
	if err != nil || len(strings.TrimSpace(string(key))) != 44 {
		t.Errorf("gossip key = %q, %v; want 32 bytes in base64", key, err)
	}

	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if running, _ := l.Running(); len(running) != 0 {
		t.Errorf("running after Down: %v", running)
	}
}

func TestUpReportsEarlyExit(t *testing.T) {
	t.Parallel()
	l := newTestLab(t, "rlble-")
	ctx := testCtx(t)
	// "true" exits at once whatever its flags: Up must say so rather than wait forever.
	err := l.Up(ctx, UpOptions{Binary: "true", StartBackends: true})
	if !errors.Is(err, ErrExited) {
		t.Fatalf("Up = %v, want ErrExited", err)
	}
}

func firstLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return "", errors.New("empty log")
	}
	return sc.Text(), nil
}
