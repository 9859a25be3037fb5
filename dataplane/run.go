package dataplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
)

// maxBatch bounds the events handed to onEvent at once.
const maxBatch = 1024

// eventPoll bounds how long an event waits in the ring for the reader.
const eventPoll = 20 * time.Millisecond

// Run reads connection events from the programs and expires idle
// connections (reporting each as EventClose) until ctx is done. Every
// NeighInterval it also refreshes next-hop MACs, releases the neighbour
// entries of next hops no longer needed, and sets back the sysctls Open
// set if someone changed them. onEvent is called from Run's goroutine only,
// with batches it may keep. An event waits in the ring for at most
// eventPoll, less when the ring fills up.
func (d *Dataplane) Run(ctx context.Context, onEvent func([]Event)) error {
	rd, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return fmt.Errorf("open event ring: %w", err)
	}
	batches := make(chan []Event)
	readErr := make(chan error, 1)
	go func() { readErr <- d.readEvents(ctx, rd, batches) }()
	defer func() {
		rd.Close() // unblocks the reader
		<-readErr
	}()

	sweep := time.NewTicker(d.cfg.SweepInterval)
	defer sweep.Stop()
	neigh := time.NewTicker(d.cfg.NeighInterval)
	defer neigh.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			readErr <- err // for the deferred wait
			return err
		case evs := <-batches:
			onEvent(evs)
		case <-sweep.C:
			evs, err := d.sweep()
			if errors.Is(err, ErrClosed) {
				return err
			}
			if err != nil {
				d.log.Warn("sweep connections", "err", err)
			}
			for len(evs) > 0 {
				n := min(len(evs), maxBatch)
				onEvent(evs[:n:n])
				evs = evs[n:]
			}
		case <-neigh.C:
			if err := d.housekeep(); err != nil {
				return err
			}
		}
	}
}

func (d *Dataplane) readEvents(ctx context.Context, rd *ringbuf.Reader, out chan<- []Event) error {
	var rec ringbuf.Record
	for {
		// The programs wake the reader only when the ring fills up; a
		// deadline collects the rest.
		rd.SetDeadline(time.Now().Add(eventPoll))
		evs := make([]Event, 0, 16)
		for len(evs) < maxBatch {
			if err := rd.ReadInto(&rec); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if errors.Is(err, ringbuf.ErrClosed) {
					return nil
				}
				return fmt.Errorf("read event: %w", err)
			}
			if len(rec.RawSample) < int(unsafe.Sizeof(directorEvent{})) {
				continue
			}
			e := *(*directorEvent)(unsafe.Pointer(&rec.RawSample[0]))
			evs = append(evs, eventFromWire(e, d.clk))
			// Gather whatever else is queued, without waiting for more.
			rd.SetDeadline(time.Now())
		}
		if len(evs) == 0 {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		select {
		case out <- evs:
		case <-ctx.Done():
			return nil
		}
	}
}

// housekeep is Run's step every NeighInterval: next-hop MACs, neighbour
// entries, sysctls. It returns only ErrClosed and logs other errors.
func (d *Dataplane) housekeep() error {
	for _, step := range []struct {
		what string
		fn   func() error
	}{
		{"refresh neighbours", d.refreshNeighbours},
		{"release neighbours", d.retainNeighbours},
		{"check sysctls", d.checkSysctls},
	} {
		if err := step.fn(); err != nil {
			if errors.Is(err, ErrClosed) {
				return err
			}
			d.log.Warn(step.what, "err", err)
		}
	}
	return nil
}
