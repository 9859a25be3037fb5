package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// wantSysctls are the per-interface sysctls Open sets, and their values.
// See the package documentation for why each one.
var wantSysctls = [...]struct{ name, val string }{
	{"forwarding", "0"},
	{"send_redirects", "0"},
}

// sysctl is one interface sysctl Open set, kept open: /proc/sys/net
// resolves a name in the network namespace of the thread that opens it,
// so a file opened once by Open keeps addressing Open's namespace, from
// whatever thread Run checks it.
type sysctl struct {
	iface, name, want string
	f                 *os.File
	failing           bool // the last check failed and said so
}

// key is the sysctl's dotted name.
func (s *sysctl) key() string { return "net.ipv4.conf." + s.iface + "." + s.name }

// openSysctls opens the sysctls of the named interfaces (empty names are
// skipped) for reading and writing.
func openSysctls(ifaces ...string) ([]*sysctl, error) {
	var out []*sysctl
	for _, ifc := range ifaces {
		if ifc == "" {
			continue
		}
		for _, w := range wantSysctls {
			p := filepath.Join("/proc/sys/net/ipv4/conf", ifc, w.name)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				closeSysctls(out)
				return nil, fmt.Errorf("open sysctl %s: %w", p, err)
			}
			out = append(out, &sysctl{iface: ifc, name: w.name, want: w.val, f: f})
		}
	}
	return out, nil
}

func closeSysctls(ss []*sysctl) error {
	var errs []error
	for _, s := range ss {
		if err := s.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close sysctl %s: %w", s.key(), err))
		}
	}
	return errors.Join(errs...)
}

// enforce sets the sysctl to its value unless it holds it already, and
// returns the value it found.
func (s *sysctl) enforce() (found string, err error) {
	var buf [32]byte
	n, err := s.f.ReadAt(buf[:], 0)
	if err != nil && n == 0 {
		return "", fmt.Errorf("read sysctl %s: %w", s.key(), err)
	}
	found = string(bytes.TrimSpace(buf[:n]))
	if found == s.want {
		return found, nil
	}
	if _, err := s.f.WriteAt([]byte(s.want), 0); err != nil {
		return found, fmt.Errorf("set sysctl %s: %w", s.key(), err)
	}
	return found, nil
}

// setSysctls makes the kernel refuse to route what the programs leave to
// it, at Open.
func setSysctls(ss []*sysctl) error {
	for _, s := range ss {
		if _, err := s.enforce(); err != nil {
			return err
		}
	}
	return nil
}

// checkSysctls restores the sysctls Open set where they have changed
// since, each time with a warning, and counts the repairs (Stats).
func (d *Dataplane) checkSysctls() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	var errs []error
	for _, s := range d.sysctls {
		found, err := s.enforce()
		if err != nil {
			// Once per failure, not on every tick.
			if !s.failing {
				errs = append(errs, err)
			}
			s.failing = true
			continue
		}
		s.failing = false
		if found != s.want {
			d.sysctlRepairs++
			d.log.Warn("sysctl changed behind the director, restored",
				"sysctl", s.key(), "iface", s.iface, "found", found, "want", s.want)
		}
	}
	return errors.Join(errs...)
}
