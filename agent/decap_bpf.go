package agent

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/raftlb/raftlb/dataplane"
)

// BPFDecapper decapsulates with dataplane's TC ingress program (clsact +
// cls_bpf). The filter outlives the process, so a restarted agent keeps
// decapsulating. Like tunl0, the program accepts any outer source: the
// sources Attach is given are not enforced. It works in the caller's network
// namespace.
type BPFDecapper struct{}

var _ Decapper = BPFDecapper{}

// Mode returns DecapModeBPF.
func (BPFDecapper) Mode() string { return DecapModeBPF }

// Attach installs the program on iface unless it is there already, so the
// reconciler can call it on every pass without reloading anything. created
// says it added the clsact qdisc.
func (BPFDecapper) Attach(iface string, _ []netip.Addr) (created bool, err error) {
	ok, err := dataplane.DecapInstalled(iface)
	if err != nil {
		return false, fmt.Errorf("check decap on %s: %w", iface, err)
	}
	if ok {
		return false, nil
	}
	created, err = dataplane.InstallDecap(iface)
	if err != nil {
		return created, fmt.Errorf("install decap on %s: %w", iface, err)
	}
	return created, nil
}

// Detach removes the program from iface, and the clsact qdisc if created
// (Attach added it) and nothing else uses it; an interface that is gone has
// nothing attached.
func (BPFDecapper) Detach(iface string, created bool) error {
	err := dataplane.RemoveDecap(iface, created)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove decap from %s: %w", iface, err)
	}
	return nil
}
