package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// raftlbBin is the binary under test, built once by TestMain.
var raftlbBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "raftlb-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	raftlbBin = filepath.Join(dir, "raftlb")
	out, err := exec.Command("go", "build", "-o", raftlbBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build raftlb: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// result is one finished CLI run.
type result struct {
	stdout, stderr string
	code           int
}

// run runs the binary with args and env (on top of a copy of the environment without
// any RAFTLB_* variable) and waits at most a minute.
func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(raftlbBin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RAFTLB_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start raftlb: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("raftlb %s: still running after a minute", strings.Join(args, " "))
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run raftlb: %v", err)
	}
	return r
}

// TestUsageErrors checks flag mistakes are caught before any connection, naming the flag.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad protocol", []string{"service", "add", "--vip", "198.51.100.10", "--port", "80", "--proto", "sctp"}, `--proto: "sctp" is not one of tcp, udp`},
		{"bad scheduler", []string{"service", "add", "--vip", "198.51.100.10", "--port", "80", "--scheduler", "random"}, "--scheduler"},
		{"bad method", []string{"realserver", "add", "--vip", "198.51.100.10", "--port", "80", "--address", "192.0.2.11", "--method", "gre"}, "--method"},
		{"bad health interval", []string{"service", "add", "--vip", "198.51.100.10", "--port", "80", "--health-interval", "-1s"}, "--health-interval"},
		{"bad kind", []string{"address", "set", "--address", "203.0.113.254", "--kind", "router"}, "--kind"},
		{"bad output", []string{"service", "list", "-o", "yaml"}, "--output"},
		{"missing vip", []string{"service", "add", "--port", "80"}, `"vip"`},
		{"bad agent", []string{"tls", "init", "--dir", t.TempDir(), "--agent", "rs1"}, "--agent"},
		{"invalid director config", []string{"director", "--id", "d1", "--insecure"}, "data-dir: required"},
		{"bad peers", []string{"director", "--id", "d1", "--data-dir", t.TempDir(), "--insecure", "--peers", "d1"}, "peers"},
		{"bad conn table size", []string{"director", "--id", "d1", "--data-dir", t.TempDir(), "--insecure", "--conn-table-size", "-5"}, "conn-table-size: -5 is not between"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, nil, tc.args...)
			if r.code != 2 {
				t.Errorf("exit code %d, want 2; stderr: %s", r.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "raftlb: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q does not start with raftlb: and mention %q", r.stderr, tc.want)
			}
		})
	}
}

// TestDirectorConfigFile checks that a config file is read and flags given on the
// command line override it, through the messages of Validate.
func TestDirectorConfigFile(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "director.yaml")
	if err := os.WriteFile(file, []byte("id: d1\ninsecure: true\nattach_mode: sideways\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "director", "--config", file)
	if r.code != 2 || !strings.Contains(r.stderr, `attach-mode: "sideways"`) || !strings.Contains(r.stderr, "data-dir: required") {
		t.Errorf("file only: code %d, stderr %q; want the file's attach mode and a missing data-dir reported", r.code, r.stderr)
	}
	r = run(t, nil, "director", "--config", file, "--attach-mode", "generic", "--data-dir", t.TempDir(), "--peers", "d2=127.0.0.1:1")
	if r.code != 2 || strings.Contains(r.stderr, "attach-mode") || strings.Contains(r.stderr, "data-dir") ||
		!strings.Contains(r.stderr, `must include this node's id "d1"`) {
		t.Errorf("flags over file: code %d, stderr %q; want only the peers error", r.code, r.stderr)
	}
}

func TestTLSInit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := run(t, nil, "tls", "init", "--dir", dir, "--ip", "192.0.2.50", "--dns", "lb.example", "--director", "d1", "--agent", "rs1=192.0.2.11,203.0.113.11")
	if r.code != 0 {
		t.Fatalf("tls init: code %d: %s", r.code, r.stderr)
	}
	for _, f := range []string{"ca.pem", "director.pem", "director-key.pem", "admin.pem", "reader.pem", "director-d1.pem", "agent-rs1.pem", "agent-rs1-key.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("tls init did not write %s: %v", f, err)
		}
	}
}
