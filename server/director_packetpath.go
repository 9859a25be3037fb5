package server

import (
	"context"

	"github.com/raftlb/raftlb/dataplane"
	"github.com/raftlb/raftlb/server/fsm"
)

// packetPath returns the director's PacketPath, or nil when it has none (a
// witness, or a director run without --iface).
func (d *Director) packetPath() *PacketPath {
	pp, _ := d.dataplane.(*PacketPath)
	return pp
}

// packetPathFSMOptions binds a PacketPath given with WithDataplane to this
// director (its id, its counters on /metrics) and returns the state-machine
// options it needs: the connection hook through which replicated flushes
// reach the dataplane. Called by New before the state machine is made.
func (d *Director) packetPathFSMOptions() []fsm.Option {
	pp := d.packetPath()
	if pp == nil {
		return nil
	}
	pp.id = d.cfg.ID
	d.metrics.reg.MustRegister(newDataplaneCollector(pp))
	return []fsm.Option{fsm.WithConnectionHook(pp.onConnChange)}
}

// runPacketPath runs the dataplane's loop and the lease keeper until ctx
// ends; without a PacketPath it returns at once.
func (d *Director) runPacketPath(ctx context.Context) {
	pp := d.packetPath()
	if pp == nil {
		return
	}
	pp.run(ctx, d.newLeaseKeeper(pp.dp), d.onConnEvents)
}

// onConnEvents receives the dataplane's connection events (new, state
// change, refresh, close), in order, from the dataplane's loop, and hands
// them to connection-table replication (server/ha's batcher). It must not
// block.
func (d *Director) onConnEvents(evs []dataplane.Event) { d.ha.onConnEvents(evs) }
