package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLabUpDown brings a whole lab up with the CLI, talks to it the way `lab env`
// says, and checks `lab down` leaves no namespace of the prefix behind.
func TestLabUpDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the lab builds network namespaces: needs root")
	}
	t.Parallel()
	const prefix = "rlbcli-"
	dir := t.TempDir()
	flags := []string{"--prefix", prefix, "--dir", dir}
	t.Cleanup(func() {
		if r := run(t, nil, append([]string{"lab", "down"}, flags...)...); r.code != 0 {
			t.Errorf("lab down in cleanup: %s", r.stderr)
		}
	})
	if r := run(t, nil, append([]string{"lab", "up"}, flags...)...); r.code != 0 {
		logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			t.Logf("%s:\n%s", filepath.Base(l), tailLines(string(b), 30))
		}
		t.Fatalf("lab up: code %d: %s", r.code, r.stderr)
	}

	r := run(t, nil, append([]string{"lab", "env"}, flags...)...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "export RAFTLB_SERVER=") {
		t.Fatalf("lab env: code %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	env := strings.Fields(strings.TrimPrefix(strings.TrimSpace(r.stdout), "export "))
	args := append(append([]string{"netns", "exec", prefix + "client", "env"}, env...), raftlbBin, "status")
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Errorf("status from the lab's client: %v\n%s", err, out)
	}

	if r := run(t, nil, append([]string{"lab", "down"}, flags...)...); r.code != 0 {
		t.Fatalf("lab down: code %d: %s", r.code, r.stderr)
	}
	left, err := filepath.Glob("/run/netns/" + prefix + "*")
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("lab down left namespaces: %v", left)
	}
}
