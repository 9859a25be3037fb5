package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/raftlb/raftlb/deploy/lab"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// raftlbBin is the binary under test, built once by TestMain.
var raftlbBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // every test skips, saying why: nothing to build
	}
	dir, err := os.MkdirTemp("", "raftlb-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	raftlbBin = filepath.Join(dir, "raftlb")
	out, err := exec.Command("go", "build", "-o", raftlbBin, "github.com/raftlb/raftlb/cmd/raftlb").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build raftlb: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// The lab's realservers and what the tests configure on them.
var realservers = []string{"rs1", "rs2", "rs3"}

// testLab is a lab brought up for one test, torn down in its cleanup.
type testLab struct {
	*lab.Lab
	tb  testing.TB
	ctx context.Context
}

// upLab brings up a lab under prefix with what opts asks for (the binary is filled in)
// and registers its teardown; on failure the processes' logs are printed first.
func upLab(tb testing.TB, prefix string, opts lab.UpOptions) *testLab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: the lab creates network namespaces")
	}
	log := slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	l, err := lab.New(prefix, tb.TempDir(), log)
	if err != nil {
		tb.Fatal(err)
	}
	l.StopTimeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	tl := &testLab{Lab: l, tb: tb, ctx: ctx}
	tb.Cleanup(func() {
		cancel()
		if tb.Failed() {
			tl.dumpLogs()
		}
		if err := l.Down(context.Background()); err != nil {
			tb.Errorf("lab down: %v", err)
		}
	})
	opts.Binary = raftlbBin
	if err := l.Up(ctx, opts); err != nil {
		tb.Fatalf("lab up: %v", err)
	}
	return tl
}

func (l *testLab) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "logs", "*.log"))
	for _, p := range logs {
		b, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		lines = lines[max(0, len(lines)-25):]
		l.tb.Logf("--- %s:\n%s", filepath.Base(p), strings.Join(lines, "\n"))
	}
}

// cli runs the CLI from the client namespace as admin against d1.
func (l *testLab) cli(args ...string) ([]byte, error) {
	return l.CLI(l.ctx, raftlbBin, "d1", append(args, "--timeout", "10s")...)
}

// mustCLI is cli that must succeed.
func (l *testLab) mustCLI(args ...string) string {
	l.tb.Helper()
	out, err := l.cli(args...)
	if err != nil {
		l.tb.Fatalf("raftlb %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// getJSON runs a read verb with -o json and decodes its answer into m.
func (l *testLab) getJSON(m proto.Message, args ...string) error {
	return l.getJSONFrom("d1", m, args...)
}

// getJSONFrom is getJSON against director host.
func (l *testLab) getJSONFrom(host string, m proto.Message, args ...string) error {
	out, err := l.CLI(l.ctx, raftlbBin, host, append(args, "-o", "json", "--timeout", "10s")...)
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(out, m); err != nil {
		return fmt.Errorf("decode %s: %w: %q", strings.Join(args, " "), err, out)
	}
	return nil
}

// agents returns the agents as `raftlb agent list` reports them, by id.
func (l *testLab) agents() (map[string]*raftlbv1.AgentInfo, error) {
	var r raftlbv1.ListAgentsResponse
	if err := l.getJSON(&r, "agent", "list"); err != nil {
		return nil, err
	}
	out := make(map[string]*raftlbv1.AgentInfo)
	for _, a := range r.GetAgents() {
		out[a.GetId()] = a
	}
	return out, nil
}

// waitAgentsRegistered waits until every realserver's agent has registered.
func (l *testLab) waitAgentsRegistered() {
	l.tb.Helper()
	eventually(l.tb, 30*time.Second, "every agent registers", func() error {
		ag, err := l.agents()
		if err != nil {
			return err
		}
		for _, rs := range realservers {
			if _, ok := ag[rs]; !ok {
				return fmt.Errorf("%s has not registered (agents: %v)", rs, slices.Sorted(maps.Keys(ag)))
			}
		}
		return nil
	})
}

// waitProcessGone waits until the recorded process name no longer runs.
func (l *testLab) waitProcessGone(name string) {
	l.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.WaitExited(ctx, name); err != nil {
		l.tb.Fatal(err)
	}
}

// kill sends SIGKILL to the recorded process name and waits until it is gone.
func (l *testLab) kill(name string) {
	l.tb.Helper()
	if err := l.Signal(name, syscall.SIGKILL); err != nil {
		l.tb.Fatalf("kill %s: %v", name, err)
	}
	l.waitProcessGone(name)
}

// eventually polls f until it succeeds or timeout passes.
func eventually(tb testing.TB, timeout time.Duration, what string, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval under a deadline
	}
}

// kernelState is what the tests read back from a realserver's kernel: everything the
// agent may add, change or remove, as sorted lines (JSON objects with sorted keys where
// ip(8) or tc(8) give JSON), so two states compare with cmp.Diff.
type kernelState struct {
	Links   []string
	Addrs   []string // "lo 198.51.100.10/32"
	Rules   []string
	Routes  []string // every table
	Sysctls []string // "eth0/arp_ignore=1"
	Qdiscs  []string
	Filters []string // "eth0 ingress {...}"
}

// sysctlIfaces are the conf/ directories whose sysctls kernelState records.
var sysctlIfaces = []string{"all", "default", "lo", lab.FrontIface, lab.InsideIface}

// kernel reads host's kernel state.
func (l *testLab) kernel(host string) (kernelState, error) {
	var st kernelState
	ns := l.NS(host)
	var links []struct {
		Name     string `json:"ifname"`
		LinkInfo struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
		Flags    []string `json:"flags"`
		AddrInfo []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := jsonCmd(l.ctx, &links, "ip", "-n", ns, "-d", "-j", "addr", "show"); err != nil {
		return st, err
	}
	for _, lk := range links {
		st.Links = append(st.Links, fmt.Sprintf("%s kind=%s flags=%s", lk.Name, lk.LinkInfo.Kind, strings.Join(lk.Flags, ",")))
		for _, a := range lk.AddrInfo {
			st.Addrs = append(st.Addrs, fmt.Sprintf("%s %s/%d", lk.Name, a.Local, a.PrefixLen))
		}
	}
	var err error
	if st.Rules, err = canonicalJSON(l.ctx, "ip", "-n", ns, "-j", "rule", "show"); err != nil {
		return st, err
	}
	if st.Routes, err = canonicalJSON(l.ctx, "ip", "-n", ns, "-j", "route", "show", "table", "all"); err != nil {
		return st, err
	}
	if st.Qdiscs, err = canonicalJSON(l.ctx, "tc", "-n", ns, "-j", "qdisc", "show"); err != nil {
		return st, err
	}
	for _, ifc := range []string{lab.FrontIface, lab.InsideIface} {
		fs, err := canonicalJSON(l.ctx, "tc", "-n", ns, "-j", "filter", "show", "dev", ifc, "ingress")
		if err != nil {
			return st, err
		}
		for _, f := range fs {
			st.Filters = append(st.Filters, ifc+" ingress "+f)
		}
	}
	var files []string
	for _, ifc := range sysctlIfaces {
		for _, k := range []string{"arp_ignore", "arp_announce", "rp_filter"} {
			files = append(files, "/proc/sys/net/ipv4/conf/"+ifc+"/"+k)
		}
	}
	out, err := l.Exec(l.ctx, host, append([]string{"cat"}, files...)...)
	if err != nil {
		return st, err
	}
	vals := strings.Fields(string(out))
	if len(vals) != len(files) {
		return st, fmt.Errorf("read sysctls in %s: %d values for %d files", ns, len(vals), len(files))
	}
	for i, f := range files {
		st.Sysctls = append(st.Sysctls, strings.TrimPrefix(f, "/proc/sys/net/ipv4/conf/")+"="+vals[i])
	}
	for _, s := range [][]string{st.Links, st.Addrs, st.Rules, st.Routes, st.Qdiscs, st.Filters, st.Sysctls} {
		slices.Sort(s)
	}
	return st, nil
}

// jsonCmd runs argv in the root namespace (its -n flag picks a lab namespace) and
// decodes its JSON output into v.
func jsonCmd(ctx context.Context, v any, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("run %s: %w: %s", strings.Join(argv, " "), err, ee.Stderr)
		}
		return fmt.Errorf("run %s: %w", strings.Join(argv, " "), err)
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		out = []byte("[]")
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("decode %s: %w", strings.Join(argv, " "), err)
	}
	return nil
}

// canonicalJSON runs argv, which prints a JSON array, and returns each element
// re-encoded with sorted keys.
func canonicalJSON(ctx context.Context, argv ...string) ([]string, error) {
	var objs []map[string]any
	if err := jsonCmd(ctx, &objs, argv...); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(objs))
	for _, o := range objs {
		b, err := json.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", strings.Join(argv, " "), err)
		}
		out = append(out, string(b))
	}
	return out, nil
}

// ipRule and ipRoute are the fields of ip -j rule/route the assertions look at.
type ipRule struct {
	Priority int    `json:"priority"`
	Src      string `json:"src"`
	IPProto  string `json:"ipproto"`
	Sport    int    `json:"sport"`
	Table    string `json:"table"`
}

type ipRoute struct {
	Dst     string           `json:"dst"`
	Gateway string           `json:"gateway"`
	Dev     string           `json:"dev"`
	Table   string           `json:"table"`
	Metrics []map[string]int `json:"metrics"`
}

func (st kernelState) rules() []ipRule   { return decodeAll[ipRule](st.Rules) }
func (st kernelState) routes() []ipRoute { return decodeAll[ipRoute](st.Routes) }

func decodeAll[T any](lines []string) []T {
	out := make([]T, 0, len(lines))
	for _, s := range lines {
		var v T
		if err := json.Unmarshal([]byte(s), &v); err == nil {
			out = append(out, v)
		}
	}
	return out
}
