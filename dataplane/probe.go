package dataplane

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SetTunProbe makes the front interface's TC egress program encapsulate
// the director's own IPv4 packets carrying mark to realserver rs
// (IPv4-in-IPv4 from the front address, DF set), so a health probe sent to
// a VIP travels the TUN path a client's packet does. Routing the marked
// packets out of the front interface towards rs's next hop is the
// caller's. Mark 0 is refused: every unmarked packet carries it.
func (d *Dataplane) SetTunProbe(mark uint32, rs netip.Addr) error {
	if mark == 0 || !rs.Is4() {
		return fmt.Errorf("set tun probe %#x to %s: %w", mark, rs, ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if err := d.objs.TunProbes.Put(mark, be32(rs)); err != nil {
		return fmt.Errorf("set tun probe %#x to %s: %w", mark, rs, err)
	}
	return nil
}

// DeleteTunProbe stops encapsulating packets carrying mark; deleting an
// absent mark is no error.
func (d *Dataplane) DeleteTunProbe(mark uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if err := d.objs.TunProbes.Delete(mark); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete tun probe %#x: %w", mark, err)
	}
	return nil
}
