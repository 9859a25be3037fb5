package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrAlreadyRunning: another agent holds the state directory, or already
// runs in this network namespace. Two agents converging one kernel would undo
// each other's work and lose track of what each owns.
var ErrAlreadyRunning = errors.New("another raftlb agent is running")

const (
	lockFile = "lock"
	// netnsGuard is an abstract unix socket name. Abstract sockets belong to
	// the network namespace, and the kernel frees the name when the process
	// dies, however it dies: one agent per namespace, no stale lock files.
	netnsGuard = "@raftlb-agent"
)

// lockStateDir takes an exclusive lock on the state directory for the life of
// the process (or until release) and records the holder's pid in the lock file.
func lockStateDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock state dir %s: held by another agent%s: %w", dir, holder, ErrAlreadyRunning)
		}
		return nil, fmt.Errorf("lock state dir %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	// Closing the file drops the lock; the file itself stays, so a waiting
	// agent never locks an unlinked inode.
	return func() { f.Close() }, nil
}

// claimNetns binds the namespace's agent guard, failing with
// ErrAlreadyRunning while another agent holds it.
func claimNetns() (release func(), err error) {
	c, err := net.ListenPacket("unixgram", netnsGuard)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("claim network namespace: an agent already runs here: %w", ErrAlreadyRunning)
		}
		return nil, fmt.Errorf("claim network namespace: %w", err)
	}
	return func() { c.Close() }, nil
}
