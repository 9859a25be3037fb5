package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/raftlb/raftlb/dataplane"
)

// A tableSnap is a director's state table at one moment: raftlb's
// connection table or the director namespace's conntrack table.
type tableSnap struct {
	entries int
	// capacity is raftlb's Config.ConnTableSize or nf_conntrack_max.
	capacity int
	// slots is what raftlb's table can hold at most, a third more than
	// its capacity (two-choice buckets); 0 for conntrack.
	slots int
	// refused counts new flows raftlb forwarded without recording them:
	// no free slot (conn_table_full) or a contended bucket lock
	// (conn_table_busy).
	refused uint64
	// nat is set on raftlb's NAT path, which writes a reverse-NAT entry
	// for every new flow, recorded or not, into a table as big as the
	// connection table. rnatRefused counts those that found no slot
	// (rnat_table_full, full or contended): the flow's replies cannot be
	// translated back to the VIP.
	nat         bool
	rnatRefused uint64
	// evicted counts unreplied conntrack entries removed to make room for
	// a new one (early_drop), dropped the packets conntrack dropped
	// because it found none to remove.
	evicted, dropped uint64
}

// A tableFill is a table at the start and at the end of a counted window.
type tableFill struct {
	start, end tableSnap
	// packets is what the sink counted between the two reads, so that
	// the counters' deltas per packet are exact (measure says how).
	packets uint64
}

// limit is the most entries the table takes: raftlb's slots (a third
// more than its capacity; inserts begin to fail only as the last ones
// go), conntrack's nf_conntrack_max.
func (s tableSnap) limit() int {
	if s.slots > 0 {
		return s.slots
	}
	return s.capacity
}

// full reports whether the table was full when the count started: at
// least 99% of its limit in use, and growing by less than 1% of it
// during the window.
func (f tableFill) full() bool {
	l := float64(f.start.limit())
	return float64(f.start.entries) >= 0.99*l && float64(f.end.entries-f.start.entries) < 0.01*l
}

// atLimit reports whether the table was at least 99% of its limit in use
// when the count ended: a table meant to be still filling (churn) that
// got there spent part of the window evicting or refusing.
func (f tableFill) atLimit() bool {
	return float64(f.end.entries) >= 0.99*float64(f.end.limit())
}

// created is the entries added in the window per counted packet,
// evicted ones included.
func (f tableFill) created() float64 {
	if f.packets == 0 {
		return 0
	}
	return float64(f.end.entries-f.start.entries+int(f.end.evicted-f.start.evicted)) / float64(f.packets)
}

// share is n as a fraction of the packets counted in the window.
func (f tableFill) share(n func(tableSnap) uint64) float64 {
	if f.packets == 0 {
		return 0
	}
	return float64(n(f.end)-n(f.start)) / float64(f.packets)
}

// connTable reads raftlb's connection table; nat says the path writes
// reverse-NAT entries. The sum of the active counts is live (the table's
// own count, Stats.Conns, is as of the last sweep), and equals the
// table's entries while nothing expires: a run is far shorter than the
// UDP timeout.
func connTable(d *dataplane.Dataplane, nat bool) (tableSnap, error) {
	st, err := d.Stats()
	if err != nil {
		return tableSnap{}, fmt.Errorf("read dataplane stats: %w", err)
	}
	s := tableSnap{
		capacity: st.ConnCapacity,
		slots:    st.ConnSlots,
		refused:  st.Reasons[dataplane.ReasonConnTableFull] + st.Reasons[dataplane.ReasonConnTableBusy],
		nat:      nat,
	}
	if nat {
		s.rnatRefused = st.Reasons[dataplane.ReasonRNATTableFull]
	}
	for _, n := range st.Active {
		s.entries += int(n)
	}
	return s, nil
}

// conntrackTable reads the conntrack table of namespace ns.
func (l *lab) conntrackTable(ns string) (tableSnap, error) {
	var s tableSnap
	err := l.do(ns, func() error {
		var err error
		if s.entries, err = readInt("/proc/sys/net/netfilter/nf_conntrack_count"); err != nil {
			return err
		}
		if s.capacity, err = readInt("/proc/sys/net/netfilter/nf_conntrack_max"); err != nil {
			return err
		}
		// thread-self: /proc/self/net is the main thread's namespace.
		f, err := os.Open("/proc/thread-self/net/stat/nf_conntrack")
		if err != nil {
			return fmt.Errorf("open conntrack stats: %w", err)
		}
		defer f.Close()
		st, err := parseConntrackStat(f)
		if err != nil {
			return err
		}
		s.evicted, s.dropped = st["early_drop"], st["drop"]
		return nil
	})
	return s, err
}

func readInt(p string) (int, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", p, err)
	}
	return n, nil
}

// parseConntrackStat sums /proc/net/stat/nf_conntrack (a header of
// counter names, then one row of hex values per CPU) over the CPUs.
func parseConntrackStat(r io.Reader) (map[string]uint64, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		return nil, fmt.Errorf("read conntrack stats header: %w", errOrEOF(sc.Err()))
	}
	names := strings.Fields(sc.Text())
	sum := make(map[string]uint64, len(names))
	for sc.Scan() {
		vals := strings.Fields(sc.Text())
		if len(vals) != len(names) {
			return nil, fmt.Errorf("parse conntrack stats: %d values under %d names", len(vals), len(names))
		}
		for i, v := range vals {
			n, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("parse conntrack stats: %w", err)
			}
			sum[names[i]] += n
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read conntrack stats: %w", err)
	}
	return sum, nil
}

func errOrEOF(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

// fills[path][mix] holds the tables at each counted window, one per cycle.
type fills map[string]map[string][]tableFill

func (f fills) add(path, mix string, tf tableFill) {
	if f[path] == nil {
		f[path] = make(map[string][]tableFill)
	}
	f[path][mix] = append(f[path][mix], tf)
}
