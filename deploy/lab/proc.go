package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a long-running process started in a lab namespace by Start. It leads its own
// session and process group, so signals reach whatever it spawned too, and it outlives
// the process that started it (Down stops it).
type Proc struct {
	// Name is the name given to Start; it names the log and pid files.
	Name string
	// Host is the lab host whose namespace the process runs in.
	Host string
	// Pid is the process id, also its process group and session id.
	Pid int
	// LogPath is where stdout and stderr go.
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
}

// Start starts argv in host's namespace as a new session. Output is appended to
// Dir/logs/<name>.log; Dir/pids/<name>.pid records the pid and its start time so that
// Down, from this or any later process, stops exactly this process group.
func (l *Lab) Start(host, name string, argv ...string) (*Proc, error) {
	if err := checkHost(host); err != nil {
		return nil, err
	}
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("start %q: %w", name, ErrBadName)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("start %s: empty command", name)
	}
	for _, d := range []string{l.logDir(), l.pidDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	logPath := filepath.Join(l.logDir(), name+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer logf.Close() // the child has its own descriptor

	// ip netns exec execs argv in place, so the pid we get is argv's pid.
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.NS(host)}, argv...)...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}

	l.mu.Lock()
	defer l.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, l.NS(host), err)
	}
	p := &Proc{Name: name, Host: host, Pid: cmd.Process.Pid, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	st, err := readStat(p.Pid)
	if err == nil {
		err = writePidFile(l.pidFile(name), pidRecord{Pid: p.Pid, Start: st.start, Host: host})
	}
	if err != nil {
		_ = p.Kill()
		return nil, fmt.Errorf("record %s: %w", name, err)
	}
	l.log.Info("process started", "host", host, "name", name, "pid", p.Pid, "log", logPath)
	return p, nil
}

// Signal sends sig to the process's group. It returns os.ErrProcessDone once the
// process has been reaped, so a recycled pid is never signalled.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	if err := syscall.Kill(-p.Pid, sig); err != nil {
		return fmt.Errorf("signal %s (pid %d): %w", p.Name, p.Pid, err)
	}
	return nil
}

// Kill sends SIGKILL to the process's group.
func (p *Proc) Kill() error { return p.Signal(syscall.SIGKILL) }

// Wait blocks until the process exits and returns its exit error.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM and waits for the exit; when ctx ends first it sends SIGKILL and
// waits for that. It returns the exit error, which after a signal is expected.
func (p *Proc) Stop(ctx context.Context) error {
	if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return err
		}
		<-p.done
	}
	return p.err
}

// Signal sends sig to the process recorded under name, from this or an earlier
// process (a test killing a director that `lab up` started). A pid that now belongs to
// another process is not signalled: the error wraps os.ErrProcessDone.
func (l *Lab) Signal(name string, sig syscall.Signal) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("signal %q: %w", name, ErrBadName)
	}
	r, err := readPidFile(l.pidFile(name))
	if err != nil {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	st, err := readStat(r.Pid)
	if err != nil || st.zombie || st.start != r.Start {
		return fmt.Errorf("signal %s: %w", name, os.ErrProcessDone)
	}
	if err := signalExact(r.Pid, r.Start, sig); err != nil {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	return nil
}

// WaitExited waits until the process recorded under name no longer runs (a test
// that killed a director waits here before it restarts it), or ctx ends.
func (l *Lab) WaitExited(ctx context.Context, name string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := l.Signal(name, 0)
		if errors.Is(err, os.ErrProcessDone) {
			return nil
		}
		if err != nil && !errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("wait for %s to exit: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to exit: %w", name, ctx.Err())
		case <-tick.C:
		}
	}
}

func (l *Lab) pidDir() string             { return filepath.Join(l.Dir, "pids") }
func (l *Lab) logDir() string             { return filepath.Join(l.Dir, "logs") }
func (l *Lab) pidFile(name string) string { return filepath.Join(l.pidDir(), name+".pid") }

// pidRecord is the content of a pid file: "<pid> <starttime> <host>\n". The start time
// (clock ticks since boot, /proc/<pid>/stat field 22) tells our process from a later
// one that reused its pid.
type pidRecord struct {
	Pid   int
	Start uint64
	Host  string
}

func writePidFile(path string, r pidRecord) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d %s\n", r.Pid, r.Start, r.Host), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

func readPidFile(path string) (pidRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return pidRecord{}, fmt.Errorf("read pid file: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return pidRecord{}, fmt.Errorf("parse pid file %s: want \"pid starttime host\"", path)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return pidRecord{}, fmt.Errorf("parse pid file %s: bad pid %q", path, f[0])
	}
	start, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return pidRecord{}, fmt.Errorf("parse pid file %s: bad start time: %w", path, err)
	}
	r := pidRecord{Pid: pid, Start: start}
	if len(f) > 2 {
		r.Host = f[2]
	}
	return r, nil
}

// readPidFiles returns every record under Dir/pids with its path.
func (l *Lab) readPidFiles() (map[string]pidRecord, error) {
	paths, err := filepath.Glob(filepath.Join(l.pidDir(), "*.pid"))
	if err != nil {
		return nil, fmt.Errorf("list pid files: %w", err)
	}
	recs := make(map[string]pidRecord, len(paths))
	for _, p := range paths {
		r, err := readPidFile(p)
		if err != nil {
			// A torn or foreign file names nothing we can safely signal.
			l.log.Warn("ignoring pid file", "path", p, "err", err)
			continue
		}
		recs[p] = r
	}
	return recs, nil
}

// procStat is what Down needs from /proc/<pid>/stat.
type procStat struct {
	pid    int
	state  byte
	pgid   int
	start  uint64
	zombie bool
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// comm (field 2) may hold spaces and parentheses: parse from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse stat of %d: no comm", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("parse stat of %d: %d fields", pid, len(f))
	}
	pgid, err := strconv.Atoi(f[5-3])
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat of %d: pgid: %w", pid, err)
	}
	start, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat of %d: start time: %w", pid, err)
	}
	st := procStat{pid: pid, state: f[0][0], pgid: pgid, start: start}
	st.zombie = st.state == 'Z' || st.state == 'X'
	return st, nil
}

// netnsInode returns the inode of pid's network namespace, 0 if unreadable (gone,
// zombie, kernel thread).
func netnsInode(pid int) uint64 {
	s, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return 0
	}
	// "net:[4026532281]"
	s = strings.TrimSuffix(strings.TrimPrefix(s, "net:["), "]")
	ino, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0
	}
	return ino
}

// liveProcs lists every live (non-zombie) process visible in /proc.
func liveProcs() ([]procStat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.zombie {
			continue // exited between ReadDir and now, or waiting to be reaped
		}
		out = append(out, st)
	}
	return out, nil
}
