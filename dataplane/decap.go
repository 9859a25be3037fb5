package dataplane

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The decap filter's identity on the clsact ingress hook; InstallDecap
// replaces and RemoveDecap deletes exactly this filter.
const (
	decapName     = "raftlb_decap"
	decapPriority = 0xc0de
	decapHandle   = 1
)

// InstallDecap attaches the TUN decapsulation program to iface's TC
// ingress (clsact + cls_bpf, direct action), for realservers whose kernel
// has no ipip module. The filter outlives the process, so a restarted
// agent causes no gap; calling it again replaces the filter in place.
// createdQdisc reports whether this call added the clsact qdisc (rather than
// finding one): only then is it the caller's to remove with RemoveDecap.
func InstallDecap(iface string) (createdQdisc bool, err error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return false, fmt.Errorf("look up interface %s: %w", iface, err)
	}
	q := clsact(l)
	switch err := netlink.QdiscAdd(q); {
	case err == nil:
		createdQdisc = true
	case !errors.Is(err, unix.EEXIST):
		return false, fmt.Errorf("add clsact to %s: %w", iface, err)
	}
	var objs decapObjects
	if err := loadDecapObjects(&objs, nil); err != nil {
		return createdQdisc, fmt.Errorf("load decap program: %w", err)
	}
	// The filter holds its own reference to the program.
	defer objs.Close()
	f := decapFilter(l)
	f.Fd = objs.TcDecap.FD()
	if err := netlink.FilterReplace(f); err != nil {
		return createdQdisc, fmt.Errorf("attach decap filter to %s: %w", iface, err)
	}
	return createdQdisc, nil
}

// RemoveDecap removes the filter InstallDecap added and, if removeQdisc (the
// caller created the clsact qdisc) and no other filter uses it, the qdisc.
// A qdisc someone else created stays. Removing what is not there is not an
// error.
func RemoveDecap(iface string, removeQdisc bool) error {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("look up interface %s: %w", iface, err)
	}
	installed, err := DecapInstalled(iface)
	if err != nil {
		return err
	}
	if installed {
		if err := netlink.FilterDel(decapFilter(l)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove decap filter from %s: %w", iface, err)
		}
	}
	if !removeQdisc {
		return nil
	}
	// The caller's qdisc goes even if someone removed the filter before.
	var others int
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := netlink.FilterList(l, parent)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // no clsact qdisc left
		}
		if err != nil {
			return fmt.Errorf("list filters of %s: %w", iface, err)
		}
		others += len(fs)
	}
	if others == 0 {
		if err := netlink.QdiscDel(clsact(l)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("remove clsact from %s: %w", iface, err)
		}
	}
	return nil
}

// DecapInstalled reports whether iface carries the decap filter.
func DecapInstalled(iface string) (bool, error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return false, fmt.Errorf("look up interface %s: %w", iface, err)
	}
	fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		// No clsact qdisc: nothing installed.
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("list filters of %s: %w", iface, err)
	}
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Priority == decapPriority && bf.Handle == decapHandle {
			return true, nil
		}
	}
	return false, nil
}

func clsact(l netlink.Link) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

func decapFilter(l netlink.Link) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: l.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    decapHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  decapPriority,
		},
		Name:         decapName,
		DirectAction: true,
	}
}
