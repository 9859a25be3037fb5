package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"
)

// Errors returned by the package.
var (
	// ErrBadPrefix: a prefix must start with "rlb" so a lab never touches a namespace it
	// does not own.
	ErrBadPrefix = errors.New("lab prefix must match rlb[a-z0-9-]* and be at most 32 bytes")
	// ErrUnknownHost: the name is not a lab host.
	ErrUnknownHost = errors.New("unknown lab host")
	// ErrBadName: a process name must be usable as a file name.
	ErrBadName = errors.New("process name must match [A-Za-z0-9._-]+")
	// ErrNotRoot: building a lab needs root.
	ErrNotRoot = errors.New("the lab needs root")
)

var (
	prefixRE = regexp.MustCompile(`^rlb[a-z0-9-]*$`)
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
)

// Lab is one instance of the lab topology, identified by its prefix, with its state
// under Dir. A Lab value holds no state of its own that Down needs: a new value with the
// same prefix and Dir can tear down what another (perhaps crashed) process built.
type Lab struct {
	// Prefix starts every namespace name, e.g. "rlb-".
	Prefix string
	// Dir is the state directory: pids/, logs/, tls/, data/, agent/, gossip.key.
	Dir string
	// StopTimeout is how long Down waits after SIGTERM before SIGKILL.
	StopTimeout time.Duration

	log *slog.Logger
	mu  sync.Mutex // serialises pid-file writes with Down's scan
}

// New returns a Lab for prefix with state under dir. It touches nothing on the system.
func New(prefix, dir string, log *slog.Logger) (*Lab, error) {
	if len(prefix) > 32 || !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("check prefix %q: %w", prefix, ErrBadPrefix)
	}
	if dir == "" {
		return nil, errors.New("check dir: empty state directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve dir %q: %w", dir, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lab{
		Prefix:      prefix,
		Dir:         abs,
		StopTimeout: 5 * time.Second,
		log:         log.With("component", "lab", "prefix", prefix),
	}, nil
}

// NS returns the namespace name of host: "d1" -> "rlb-d1".
func (l *Lab) NS(host string) string { return l.Prefix + host }

// checkHost fails unless host is a lab namespace (the switch included).
func checkHost(host string) error {
	for _, n := range namespaceHosts() {
		if n == host {
			return nil
		}
	}
	return fmt.Errorf("check host %q: %w", host, ErrUnknownHost)
}

// Build creates the namespaces, links and addresses. Whatever a previous lab with the
// same prefix left behind is torn down first (see Down), so Build can be repeated.
func (l *Lab) Build(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("build lab: %w", ErrNotRoot)
	}
	if err := l.Down(ctx); err != nil {
		return fmt.Errorf("build lab: %w", err)
	}
	start := time.Now()
	for _, host := range namespaceHosts() {
		ns := l.NS(host)
		if err := l.ip(ctx, "netns", "add", ns); err != nil {
			return err
		}
		// Before any link arrives, so no interface ever gets an IPv6 link-local address.
		if err := l.disableIPv6(host); err != nil {
			return err
		}
		if err := l.ip(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	sw := l.NS(SwitchHost)
	for _, br := range []string{FrontBridge, InsideBridge} {
		// STP stays off (the default), so ports forward as soon as they are up.
		if err := l.ip(ctx, "-n", sw, "link", "add", "name", br, "type", "bridge", "forward_delay", "0"); err != nil {
			return err
		}
		if err := l.ip(ctx, "-n", sw, "link", "set", br, "up"); err != nil {
			return err
		}
	}
	for _, lk := range links() {
		ns := l.NS(lk.Host)
		// The far end is born in the host's namespace: nothing appears in the root one.
		if err := l.ip(ctx, "-n", sw, "link", "add", "name", lk.SwitchPort, "type", "veth",
			"peer", "name", lk.Iface, "netns", ns); err != nil {
			return err
		}
		if err := l.ip(ctx, "-n", sw, "link", "set", lk.SwitchPort, "master", lk.Bridge, "up"); err != nil {
			return err
		}
		if err := l.ip(ctx, "-n", ns, "link", "set", lk.Iface, "address", MAC(lk.Addr), "up"); err != nil {
			return err
		}
		if err := l.ip(ctx, "-n", ns, "addr", "add", lk.Prefix().String(), "dev", lk.Iface); err != nil {
			return err
		}
	}
	// The client reaches VIPs by ARP on its front link, whichever director answers.
	if err := l.ip(ctx, "-n", l.NS("client"), "route", "add", VIPNet.String(), "dev", FrontIface); err != nil {
		return err
	}
	l.log.Info("lab built", "namespaces", len(namespaceHosts()), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// disableIPv6 turns IPv6 off for current and future interfaces in host's namespace.
func (l *Lab) disableIPv6(host string) error {
	if _, err := os.Stat("/proc/sys/net/ipv6"); errors.Is(err, os.ErrNotExist) {
		return nil // kernel without IPv6: nothing to turn off
	}
	return l.InNS(host, func() error {
		for _, k := range []string{"all", "default"} {
			p := "/proc/sys/net/ipv6/conf/" + k + "/disable_ipv6"
			if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
				return fmt.Errorf("disable ipv6 in %s: %w", host, err)
			}
		}
		return nil
	})
}

// Disconnect takes host's iface off its bridge: the host's link stays up with carrier,
// but nothing passes in either direction, as when a switch port fails. Cutting a
// director's InsideIface separates it from the other voters while clients still reach it.
func (l *Lab) Disconnect(ctx context.Context, host, iface string) error {
	port, err := switchPort(host, iface)
	if err != nil {
		return err
	}
	return l.ip(ctx, "-n", l.NS(SwitchHost), "link", "set", port, "nomaster")
}

// Reconnect undoes Disconnect.
func (l *Lab) Reconnect(ctx context.Context, host, iface string) error {
	port, err := switchPort(host, iface)
	if err != nil {
		return err
	}
	br := FrontBridge
	if iface == InsideIface {
		br = InsideBridge
	}
	return l.ip(ctx, "-n", l.NS(SwitchHost), "link", "set", port, "master", br, "up")
}

// ip runs ip(8) in the root namespace (its -n flag selects a lab namespace).
func (l *Lab) ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("run ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Exec runs argv in host's namespace and returns its combined output. A non-zero exit
// is an error that carries the output too.
func (l *Lab) Exec(ctx context.Context, host string, argv ...string) ([]byte, error) {
	if err := checkHost(host); err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, errors.New("exec: empty command")
	}
	args := append([]string{"netns", "exec", l.NS(host)}, argv...)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("exec %q in %s: %w: %s", strings.Join(argv, " "), l.NS(host), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// InNS runs fn on an OS thread that has entered host's network namespace. Sockets fn
// creates belong to that namespace for their whole life, so a connection dialled inside
// fn may be used anywhere afterwards. Goroutines fn starts do not inherit the namespace.
func (l *Lab) InNS(host string, fn func() error) error {
	if err := checkHost(host); err != nil {
		return err
	}
	target, err := netns.GetFromName(l.NS(host))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", l.NS(host), err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns the runtime ends the thread
		// instead of handing a thread in the lab's namespace to other goroutines.
		runtime.LockOSThread()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", l.NS(host), err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// DialContext returns a dial function whose connections originate in host's namespace,
// for http.Transport.DialContext or grpc.WithContextDialer.
func (l *Lab) DialContext(host string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := l.InNS(host, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Listen listens on addr from host's namespace.
func (l *Lab) Listen(host, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := l.InNS(host, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}
