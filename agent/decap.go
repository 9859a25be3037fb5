package agent

import (
	"net/netip"
)

// Decapsulation modes reported in Status.DecapMode.
const (
	// DecapModeIPIP is the kernel's ipip device.
	DecapModeIPIP = "ipip"
	// DecapModeBPF is a TC ingress program on the facing interfaces.
	DecapModeBPF = "bpf"
)

// Decapper strips the outer IPv4 header of IP-in-IP packets arriving on an
// interface so the inner packet reaches the VIP on lo. The agent uses it where
// the kernel has no ipip (DecapModeBPF); the ipip device itself is managed by
// the reconciler like every other kernel object it owns.
//
// Implementations must be idempotent and must work from a fresh process: the
// agent restarts without tearing anything down, and Cleanup runs in a process
// that never attached.
type Decapper interface {
	// Mode names the mechanism, e.g. DecapModeBPF.
	Mode() string
	// Attach decapsulates on iface the packets whose outer source is one of
	// sources (all when empty; an implementation may accept any). The
	// reconciler calls it on every pass, so it must be cheap when already in
	// place and must repair an attachment someone removed. created reports
	// whether it created something others may share (for TC, the clsact
	// qdisc) rather than finding it: the reconciler records that, and Detach
	// removes it only then.
	Attach(iface string, sources []netip.Addr) (created bool, err error)
	// Detach removes what Attach installed on iface, and what it created if
	// created; nothing installed is not an error.
	Detach(iface string, created bool) error
}
