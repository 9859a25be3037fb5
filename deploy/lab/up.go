package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// UpOptions says what Up starts besides the network.
type UpOptions struct {
	// Binary is the raftlb binary the lab's processes run. It must be reachable from
	// inside the namespaces, which share the root file system; it is made absolute.
	Binary string
	// Certs writes the CA and certificates into tlsDir (see Env and DirectorArgs for
	// the file names). Nil runs TLSInit(Binary).
	Certs func(ctx context.Context, tlsDir string) error
	// StartDirectors starts d1 and d2 and the witness w1 with DirectorArgs.
	StartDirectors bool
	// StartBackends starts the lab backend (BackendArgs) in every realserver.
	StartBackends bool
	// StartAgents starts the realserver agent (AgentArgs) in every realserver once the
	// directors serve their API. It needs the certificates, which Up makes for it.
	StartAgents bool
	// DirectorFlags are appended to every director's and the witness's flags.
	DirectorFlags []string
	// AgentFlags are appended to every agent's flags.
	AgentFlags []string
}

// Up builds a fresh lab and starts what opts asks for, then waits until every director
// serves its API and every backend its HTTP port, as seen from the client; agents start
// after the directors are up (they register on their own: Up does not wait for that).
// Previous state under Dir (data, tls, logs, agent state) is removed: each Up is a new
// cluster. On failure the lab is left as it is for inspection; Down removes it.
func (l *Lab) Up(ctx context.Context, opts UpOptions) error {
	bin := opts.Binary
	if opts.StartDirectors || opts.StartBackends || opts.StartAgents {
		p, err := exec.LookPath(opts.Binary)
		if err != nil {
			return fmt.Errorf("find binary: %w", err)
		}
		if bin, err = filepath.Abs(p); err != nil {
			return fmt.Errorf("find binary: %w", err)
		}
	}
	if err := l.Build(ctx); err != nil {
		return err
	}
	for _, d := range []string{l.dataDir(), l.TLSDir(), l.logDir(), l.gossipKeyFile(), l.agentDir()} {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("reset state: %w", err)
		}
	}

	type waitFor struct {
		proc *Proc
		addr string
	}
	var waits []waitFor
	if opts.StartDirectors || opts.StartAgents {
		certs := opts.Certs
		if certs == nil {
			certs = TLSInit(bin)
		}
		if err := os.MkdirAll(l.TLSDir(), 0o700); err != nil {
			return fmt.Errorf("create tls dir: %w", err)
		}
		if err := certs(ctx, l.TLSDir()); err != nil {
			return fmt.Errorf("make certificates: %w", err)
		}
	}
	if opts.StartDirectors {
		if err := writeGossipKey(l.gossipKeyFile()); err != nil {
			return err
		}
		for _, h := range HostsWithRole(RoleDirector, RoleWitness) {
			p, err := l.StartDirector(bin, h.Name, opts.DirectorFlags...)
			if err != nil {
				return err
			}
			waits = append(waits, waitFor{p, netip.AddrPortFrom(h.Front, APIPort).String()})
		}
	}
	if opts.StartBackends {
		for _, h := range HostsWithRole(RoleRealserver) {
			p, err := l.Start(h.Name, "backend-"+h.Name, append([]string{bin}, BackendArgs(h.Name)...)...)
			if err != nil {
				return err
			}
			waits = append(waits, waitFor{p, netip.AddrPortFrom(h.Front, BackendHTTPPort).String()})
		}
	}
	for _, w := range waits {
		if err := l.WaitTCP(ctx, "client", w.addr, w.proc); err != nil {
			return err
		}
	}
	started := len(waits)
	if opts.StartAgents {
		for _, h := range HostsWithRole(RoleRealserver) {
			if _, err := l.StartAgent(bin, h.Name, opts.AgentFlags...); err != nil {
				return err
			}
			started++
		}
	}
	l.log.Info("lab up", "processes", started)
	return nil
}

// AgentName is the process name (for Signal, logs and pid files) of realserver id's agent.
func AgentName(id string) string { return "agent-" + id }

// StartAgent starts realserver id's agent (again, e.g. after a test killed it) with
// AgentArgs and extra flags. Its state directory is kept, so a restarted agent finds
// what it owns and changes nothing that is in place.
func (l *Lab) StartAgent(bin, id string, extra ...string) (*Proc, error) {
	args, err := l.AgentArgs(id)
	if err != nil {
		return nil, err
	}
	return l.Start(id, AgentName(id), append(append([]string{bin}, args...), extra...)...)
}

// AgentArgs returns the flags (after the binary) that start realserver id's agent: its
// own certificate, every director and the witness to fail over between, both links as
// facing interfaces (DR and TUN arrive on eth0, NAT on eth1) and a state directory
// under Dir. This is the one place the lab's agent command line is spelled out.
func (l *Lab) AgentArgs(id string) ([]string, error) {
	h, err := LookupHost(id)
	if err != nil {
		return nil, err
	}
	if h.Role != RoleRealserver {
		return nil, fmt.Errorf("agent args for %s: %w: role %s", id, ErrUnknownHost, h.Role)
	}
	var directors []string
	for _, d := range HostsWithRole(RoleDirector, RoleWitness) {
		directors = append(directors, netip.AddrPortFrom(d.Front, APIPort).String())
	}
	tls := l.TLSDir()
	return []string{
		"agent",
		"--id", id,
		"--directors", strings.Join(directors, ","),
		"--tls-ca", filepath.Join(tls, "ca.pem"),
		"--tls-cert", filepath.Join(tls, "agent-"+id+".pem"),
		"--tls-key", filepath.Join(tls, "agent-"+id+"-key.pem"),
		"--iface", FrontIface + "," + InsideIface,
		"--state-dir", l.AgentStateDir(id),
	}, nil
}

// AgentStateDir is the state directory of realserver id's agent.
func (l *Lab) AgentStateDir(id string) string { return filepath.Join(l.agentDir(), id) }

// StartDirector starts director or witness id (again, e.g. after a test killed it) with
// DirectorArgs and extra flags. Its data directory is kept, so a restart rejoins.
func (l *Lab) StartDirector(bin, id string, extra ...string) (*Proc, error) {
	args, err := l.DirectorArgs(id)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(l.dataDir(), id), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	return l.Start(id, id, append(append([]string{bin}, args...), extra...)...)
}

// DirectorArgs returns the flags (after the binary) that start director or witness id.
// This is the one place the lab's director command line is spelled out.
func (l *Lab) DirectorArgs(id string) ([]string, error) {
	h, err := LookupHost(id)
	if err != nil {
		return nil, err
	}
	if h.Role != RoleDirector && h.Role != RoleWitness {
		return nil, fmt.Errorf("director args for %s: %w: role %s", id, ErrUnknownHost, h.Role)
	}
	var peers []string
	for _, p := range HostsWithRole(RoleDirector, RoleWitness) {
		peers = append(peers, p.Name+"="+netip.AddrPortFrom(p.Inside, RaftPort).String())
	}
	tls := l.TLSDir()
	args := []string{
		"director",
		"--id", id,
		"--data-dir", filepath.Join(l.dataDir(), id),
		"--api-addr", netip.AddrPortFrom(h.Front, APIPort).String(),
		"--raft-addr", netip.AddrPortFrom(h.Inside, RaftPort).String(),
		"--gossip-addr", netip.AddrPortFrom(h.Inside, GossipPort).String(),
		"--metrics-addr", netip.AddrPortFrom(h.Front, MetricsPort).String(),
		"--peers", strings.Join(peers, ","),
		"--tls-ca", filepath.Join(tls, "ca.pem"),
		"--tls-cert", filepath.Join(tls, "director-"+id+".pem"),
		"--tls-key", filepath.Join(tls, "director-"+id+"-key.pem"),
		"--gossip-key-file", l.gossipKeyFile(),
		// Failover in the lab within about a second: a lost owner's VIPs move
		// once its lease has surely run out (lease plus a 50 ms margin).
		"--lease-duration", LeaseDuration.String(),
	}
	if h.Role == RoleWitness {
		return append(args, "--witness"), nil
	}
	return append(args, "--iface", FrontIface, "--inside-iface", InsideIface), nil
}

// LeaseDuration is the address lease the lab's directors grant: short, so a
// lost owner's VIPs move well within a second, and long enough that when the
// Raft leader dies a new one is usually in place before the owners' leases
// (renewed every quarter) run out.
const LeaseDuration = 600 * time.Millisecond

// BackendArgs returns the flags (after the binary) that run the lab backend for name.
func BackendArgs(name string) []string {
	return []string{"lab", "backend", "--name", name}
}

// TLSInitArgs returns the flags (after the binary) that write the lab's certificates:
// the shared ones (admin, reader, director), director-<id> for each director and the
// witness (Common Name = id), and agent-<id> for each realserver, bound to its addresses.
func TLSInitArgs(tlsDir string) []string {
	args := []string{"tls", "init", "--dir", tlsDir}
	for _, h := range HostsWithRole(RoleDirector, RoleWitness) {
		args = append(args, "--director", h.Name)
	}
	for _, h := range HostsWithRole(RoleRealserver) {
		args = append(args, "--agent", h.Name+"="+h.Front.String()+","+h.Inside.String())
	}
	return args
}

// TLSInit returns the default UpOptions.Certs: `<bin> tls init …` with TLSInitArgs.
func TLSInit(bin string) func(ctx context.Context, tlsDir string) error {
	return func(ctx context.Context, tlsDir string) error {
		out, err := exec.CommandContext(ctx, bin, TLSInitArgs(tlsDir)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("run tls init: %w: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}
}

// TLSDir holds ca.pem, <role>.pem/<role>-key.pem and the per-identity certificates.
func (l *Lab) TLSDir() string { return filepath.Join(l.Dir, "tls") }

func (l *Lab) dataDir() string       { return filepath.Join(l.Dir, "data") }
func (l *Lab) agentDir() string      { return filepath.Join(l.Dir, "agent") }
func (l *Lab) gossipKeyFile() string { return filepath.Join(l.Dir, "gossip.key") }

// writeGossipKey writes a fresh 32-byte memberlist key (AES-256), base64 on one line.
func writeGossipKey(path string) error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("make gossip key: %w", err)
	}
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write gossip key: %w", err)
	}
	return nil
}

// Env returns a shell line exporting the CLI's connection settings for an admin
// identity talking to d1, for `eval "$(raftlb lab env)"`.
func (l *Lab) Env() string {
	d1, _ := LookupHost("d1")
	tls := l.TLSDir()
	return fmt.Sprintf("export RAFTLB_SERVER=%s RAFTLB_CA=%s RAFTLB_CERT=%s RAFTLB_KEY=%s\n",
		netip.AddrPortFrom(d1.Front, APIPort),
		shellQuote(filepath.Join(tls, "ca.pem")),
		shellQuote(filepath.Join(tls, "admin.pem")),
		shellQuote(filepath.Join(tls, "admin-key.pem")))
}

// shellQuote quotes s for a POSIX shell when it holds anything but plain path bytes.
func shellQuote(s string) string {
	plain := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:,=@", r)) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ErrExited: a process Up or WaitTCP waited for exited first.
var ErrExited = errors.New("process exited")

// WaitTCP waits until a TCP connection from host to addr succeeds. If p is not nil and
// exits first, the error says so and quotes the end of its log.
func (l *Lab) WaitTCP(ctx context.Context, host, addr string, p *Proc) error {
	dial := l.DialContext(host)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		c, err := dial(attempt, "tcp4", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		var done <-chan struct{}
		if p != nil {
			done = p.Done()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s from %s: %w (last: %w)", addr, host, ctx.Err(), last)
		case <-done:
			status := "exit 0"
			if werr := p.Wait(); werr != nil {
				status = werr.Error()
			}
			return fmt.Errorf("wait for %s from %s: %s %w (%s); log tail:\n%s",
				addr, host, p.Name, ErrExited, status, tail(p.LogPath, 20))
		case <-tick.C:
		}
	}
}

// tail returns the last n lines of the file at path, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
