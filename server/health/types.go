package health

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidCheck is wrapped by every validation error of a Check, so the API
// layer can map it to InvalidArgument.
var ErrInvalidCheck = errors.New("invalid health check")

// Defaults of a Check, as in GLB: a realserver is up after two passing
// probes two seconds apart and down after three failures.
const (
	DefaultInterval       = 2 * time.Second
	DefaultTimeout        = 1 * time.Second
	DefaultRise           = 2
	DefaultFall           = 3
	DefaultPath           = "/"
	DefaultExpectedStatus = 200
)

// Protocol is the transport protocol of a virtual service.
type Protocol uint8

// Protocols. The zero value is not a protocol.
const (
	ProtocolTCP Protocol = iota + 1
	ProtocolUDP
)

func (p Protocol) String() string {
	switch p {
	case ProtocolTCP:
		return "tcp"
	case ProtocolUDP:
		return "udp"
	default:
		return "protocol(" + strconv.Itoa(int(p)) + ")"
	}
}

// Method is how a director forwards to a realserver. It matters to a Dialer
// that proves the forwarding path; the direct dialer ignores it.
type Method uint8

// Forwarding methods. The zero value is not a method.
const (
	MethodNAT Method = iota + 1
	MethodTUN
	MethodDR
)

func (m Method) String() string {
	switch m {
	case MethodNAT:
		return "nat"
	case MethodTUN:
		return "tun"
	case MethodDR:
		return "dr"
	default:
		return "method(" + strconv.Itoa(int(m)) + ")"
	}
}

// ServiceKey identifies a virtual service.
type ServiceKey struct {
	VIP      netip.Addr
	Port     uint16
	Protocol Protocol
}

func (k ServiceKey) String() string {
	return netip.AddrPortFrom(k.VIP, k.Port).String() + "/" + k.Protocol.String()
}

// Target is one realserver of one service: the unit that is probed and
// gets a verdict. A realserver in two services is two targets, because the
// services may check it differently. Target is comparable and is used as a
// map key.
type Target struct {
	Service ServiceKey
	Address netip.Addr
	// Port as configured; zero means the service's port.
	Port   uint16
	Method Method
}

// port is the realserver's effective port.
func (t Target) port() uint16 {
	if t.Port != 0 {
		return t.Port
	}
	return t.Service.Port
}

func (t Target) String() string {
	return t.Service.String() + " -> " + netip.AddrPortFrom(t.Address, t.port()).String() + " (" + t.Method.String() + ")"
}

// CheckType selects the probe.
type CheckType uint8

// Check types. The zero value is CheckNone, as in the API.
const (
	// CheckNone never probes: the target is up as soon as it is known.
	CheckNone CheckType = iota
	// CheckTCP passes when a TCP connection is established.
	CheckTCP
	// CheckHTTP passes when GET Path answers ExpectedStatus.
	CheckHTTP
	// CheckHTTPS is CheckHTTP over TLS, without verifying the certificate.
	CheckHTTPS
)

func (c CheckType) String() string {
	switch c {
	case CheckNone:
		return "none"
	case CheckTCP:
		return "tcp"
	case CheckHTTP:
		return "http"
	case CheckHTTPS:
		return "https"
	default:
		return "check(" + strconv.Itoa(int(c)) + ")"
	}
}

// Check is how a target is probed. Zero fields take the defaults (see
// WithDefaults); Check is comparable, and a changed Check restarts the probe.
type Check struct {
	Type CheckType
	// Interval between the starts of two probes.
	Interval time.Duration
	// Timeout of one probe, connection and (for HTTP) response included.
	Timeout time.Duration
	// Rise is the number of consecutive passes that mark a target up.
	Rise int
	// Fall is the number of consecutive failures that mark a target down.
	Fall int
	// Path of the HTTP(S) GET.
	Path string
	// ExpectedStatus is the only HTTP status that passes; redirects are not
	// followed, so a 301 passes only if 301 is expected.
	ExpectedStatus int
	// Port to probe; zero means the target's port.
	Port uint16
}

// WithDefaults returns c with every zero field set to its default.
func (c Check) WithDefaults() Check {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Rise == 0 {
		c.Rise = DefaultRise
	}
	if c.Fall == 0 {
		c.Fall = DefaultFall
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if c.ExpectedStatus == 0 {
		c.ExpectedStatus = DefaultExpectedStatus
	}
	return c
}

// Validate reports the first field of c (after defaults) that cannot work.
// Every error wraps ErrInvalidCheck.
func (c Check) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.Type > CheckHTTPS:
		return fmt.Errorf("%w: type %d is unknown", ErrInvalidCheck, c.Type)
	case c.Interval < 0:
		return fmt.Errorf("%w: interval %s is negative", ErrInvalidCheck, c.Interval)
	case c.Timeout < 0:
		return fmt.Errorf("%w: timeout %s is negative", ErrInvalidCheck, c.Timeout)
	case c.Rise < 0:
		return fmt.Errorf("%w: rise %d is negative", ErrInvalidCheck, c.Rise)
	case c.Fall < 0:
		return fmt.Errorf("%w: fall %d is negative", ErrInvalidCheck, c.Fall)
	case !strings.HasPrefix(c.Path, "/"):
		return fmt.Errorf("%w: path %q must start with /", ErrInvalidCheck, c.Path)
	case strings.ContainsAny(c.Path, " \t\r\n#"):
		return fmt.Errorf("%w: path %q must not contain whitespace or a fragment", ErrInvalidCheck, c.Path)
	case c.ExpectedStatus < 100 || c.ExpectedStatus > 599:
		return fmt.Errorf("%w: expected status %d is not 100-599", ErrInvalidCheck, c.ExpectedStatus)
	}
	return nil
}

// State is a target's health as this director sees it.
type State uint8

// States. A target starts Unknown and leaves it after Rise passes or Fall
// failures, whichever comes first.
const (
	StateUnknown State = iota
	StateUp
	StateDown
)

func (s State) String() string {
	switch s {
	case StateUnknown:
		return "unknown"
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	default:
		return "state(" + strconv.Itoa(int(s)) + ")"
	}
}
