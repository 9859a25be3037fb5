package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where ip-netns(8) keeps its named namespaces.
const netnsDir = "/run/netns"

// killTimeout bounds the wait after SIGKILL; only a process stuck in the kernel outlasts it.
const killTimeout = 5 * time.Second

// Down stops every process of the lab and deletes its namespaces. It is idempotent and
// needs nothing but Prefix and Dir, so it also cleans up after a crash.
//
// Processes to stop are the process groups recorded in Dir/pids (unless the pid now
// belongs to a different process, told apart by start time) and every process whose
// network namespace is one of the lab's. Each gets SIGTERM, then SIGKILL after
// StopTimeout or as soon as ctx is done. The calling process is never signalled.
func (l *Lab) Down(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("tear down lab: %w", ErrNotRoot)
	}
	l.mu.Lock()
	defer l.mu.Unlock()

	recs, err := l.readPidFiles()
	if err != nil {
		return fmt.Errorf("tear down lab: %w", err)
	}
	inodes, err := l.namespaceInodes()
	if err != nil {
		return fmt.Errorf("tear down lab: %w", err)
	}
	var errs []error
	stopped, err := l.stopAll(ctx, recs, inodes)
	if err != nil {
		errs = append(errs, err)
	}
	deleted := 0
	for _, host := range namespaceHosts() {
		ns := l.NS(host)
		if _, err := os.Lstat(filepath.Join(netnsDir, ns)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		// Use a fresh context: a cancelled ctx must not leave namespaces behind.
		if err := l.ip(context.WithoutCancel(ctx), "netns", "del", ns); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted++
	}
	stale, _ := filepath.Glob(filepath.Join(l.pidDir(), "*.pid*"))
	for _, p := range stale {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pid file: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down lab: %w", err)
	}
	if stopped+deleted > 0 {
		l.log.Info("lab down", "processes", stopped, "namespaces", deleted)
	}
	return nil
}

// namespaceInodes maps the nsfs inode of each existing lab namespace to its name.
func (l *Lab) namespaceInodes() (map[uint64]string, error) {
	// A file under /run/netns is a namespace only while the bind mount is there; compare
	// devices so a leftover plain file's tmpfs inode never matches a namespace inode.
	self, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("stat own namespace: %w", err)
	}
	nsfsDev := self.Sys().(*syscall.Stat_t).Dev
	out := make(map[uint64]string)
	for _, host := range namespaceHosts() {
		ns := l.NS(host)
		fi, err := os.Stat(filepath.Join(netnsDir, ns))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stat namespace %s: %w", ns, err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Dev != nsfsDev {
			continue
		}
		out[st.Ino] = ns
	}
	return out, nil
}

// victim is a process Down must stop, identified by pid and start time.
type victim struct {
	pid    int
	start  uint64
	reason string
}

// victims scans /proc for the lab's live processes.
func victims(recs map[string]pidRecord, inodes map[uint64]string) ([]victim, error) {
	procs, err := liveProcs()
	if err != nil {
		return nil, err
	}
	byPid := make(map[int]procStat, len(procs))
	for _, p := range procs {
		byPid[p.pid] = p
	}
	groups := make(map[int]string)
	for path, r := range recs {
		if p, ok := byPid[r.Pid]; ok && p.start != r.Start {
			continue // the pid was recycled: our group ended before it could be
		}
		// A group outlives its leader while members remain, and the kernel does not hand
		// out a pid that is still some group's id: members of group r.Pid are ours.
		groups[r.Pid] = filepath.Base(path)
	}
	self := os.Getpid()
	var out []victim
	for _, p := range procs {
		if p.pid == self {
			continue
		}
		if f, ok := groups[p.pgid]; ok {
			out = append(out, victim{pid: p.pid, start: p.start, reason: "recorded in " + f})
			continue
		}
		if ns, ok := inodes[netnsInode(p.pid)]; ok {
			out = append(out, victim{pid: p.pid, start: p.start, reason: "in netns " + ns})
		}
	}
	return out, nil
}

// stopAll signals the lab's processes until none is left: SIGTERM first, SIGKILL after
// StopTimeout or once ctx is done. Each round rescans, catching processes forked late.
// It returns how many processes it signalled.
func (l *Lab) stopAll(ctx context.Context, recs map[string]pidRecord, inodes map[uint64]string) (int, error) {
	termBy := time.Now().Add(l.StopTimeout)
	killBy := termBy.Add(killTimeout)
	sent := make(map[victim]syscall.Signal)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		vs, err := victims(recs, inodes)
		if err != nil {
			return len(sent), err
		}
		if len(vs) == 0 {
			return len(sent), nil
		}
		now := time.Now()
		if now.After(killBy) {
			pids := make([]string, 0, len(vs))
			for _, v := range vs {
				pids = append(pids, strconv.Itoa(v.pid))
			}
			return len(sent), fmt.Errorf("stop processes: still running after SIGKILL: %s", strings.Join(pids, ","))
		}
		sig := syscall.SIGTERM
		if now.After(termBy) || ctx.Err() != nil {
			sig = syscall.SIGKILL
		}
		for _, v := range vs {
			key := victim{pid: v.pid, start: v.start}
			if prev, ok := sent[key]; ok && (prev == sig || prev == syscall.SIGKILL) {
				continue
			}
			if err := signalExact(v.pid, v.start, sig); err != nil {
				l.log.Debug("signal failed", "pid", v.pid, "err", err)
				continue
			}
			sent[key] = sig
			l.log.Info("stopping process", "pid", v.pid, "comm", comm(v.pid), "signal", sig.String(), "why", v.reason)
		}
		if ctx.Err() != nil {
			<-tick.C
			continue
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// signalExact sends sig to pid only if pid is still the process that started at start:
// the pidfd pins the process, so the check and the signal cannot straddle a pid reuse.
func signalExact(pid int, start uint64, sig syscall.Signal) error {
	// The process may exit and be reaped at any step: that is "done", not
	// a failure.
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return fmt.Errorf("open pidfd %d: %w", pid, err)
	}
	defer unix.Close(fd)
	st, err := readStat(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("signal %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return err
	}
	if st.start != start {
		return fmt.Errorf("signal %d: pid reused", pid)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, os.ErrProcessDone)
	} else if err != nil {
		return fmt.Errorf("signal %d: %w", pid, err)
	}
	return nil
}

// comm returns pid's command name for logs.
func comm(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

// Running lists the recorded processes that are still alive, by name.
func (l *Lab) Running() ([]string, error) {
	recs, err := l.readPidFiles()
	if err != nil {
		return nil, err
	}
	var names []string
	for path, r := range recs {
		st, err := readStat(r.Pid)
		if err != nil || st.zombie || st.start != r.Start {
			continue
		}
		names = append(names, strings.TrimSuffix(filepath.Base(path), ".pid"))
	}
	slices.Sort(names)
	return names, nil
}
