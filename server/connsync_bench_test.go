package server

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// BenchmarkConnSync measures connection-table replication on a 3-voter
// in-process cluster (TLS, fsync'd bolt log; d1 and d2 full directors, d3 a
// witness): connection events are injected where the dataplane hands them
// over (its Run callback, into the batcher's queue) on the owner d1, and
// timed until they are in the standby d2's table. The tables are in memory
// (memDataplane), so BPF map writes are not included. "offered-150k" injects
// 1024-event batches at 150,000 events/s; "flood" injects as fast as it can.
// Reported: conns/s from the first injection to the last entry installed,
// and p50-ms and p99-ms of each entry's lag from injection to installation.
func BenchmarkConnSync(b *testing.B) {
	c, dps := haCluster(b)
	vip := netip.MustParseAddr("198.51.100.10")
	lb, _ := c.admin(c.nodes[2])
	if _, err := lb.CreateService(callCtx(b), &raftlbv1.CreateServiceRequest{Service: tcpService(vip.String(), 80), PreferredOwner: "d1"}); err != nil {
		b.Fatal(err)
	}
	ownedBy(b, dps, "d1", vip)
	waitFor(b, 10*time.Second, "d1's dataplane loop runs", func() error {
		if !dps["d1"].inject(nil) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	const total = 200_000
	offset := 0 // every run uses new connections: -count repeats the sub-benchmarks
	for _, run := range []struct {
		name string
		rate float64 // events per second; 0 floods
	}{{"offered-150k", 150_000}, {"flood", 0}} {
		b.Run(run.name, func(b *testing.B) {
			conns, lags, rate := syncRun(b, dps, vip, offset, total, run.rate)
			offset += total
			slices.Sort(lags)
			pct := func(p float64) float64 { return float64(lags[int(p*float64(len(lags)-1))].Microseconds()) / 1000 }
			b.ReportMetric(rate, "conns/s")
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.Logf("%d connections replicated", conns)
		})
	}
}

// syncRun injects total new-connection events on d1 at rate (0: flat out) and
// waits until d2 holds them all; it returns how many, each one's lag and the
// rate they were installed at.
func syncRun(b *testing.B, dps map[string]*memDataplane, vip netip.Addr, offset, total int, rate float64) (int, []time.Duration, float64) {
	b.Helper()
	const batch = 1024
	keys := make([]dataplane.ConnKey, 0, total)
	injected := make([]time.Time, 0, total)
	start := time.Now()
	for i := 0; i < total; i += batch {
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d) // pacing the offered load, not waiting for a result
			}
		}
		n := min(batch, total-i)
		evs := make([]dataplane.Event, n)
		now := time.Now()
		for j := range n {
			cn := testConn(vip, offset+i+j)
			cn.LastSeen = now
			evs[j] = dataplane.Event{Type: dataplane.EventNew, Conn: cn}
			keys = append(keys, cn.Key)
			injected = append(injected, now)
		}
		dps["d1"].inject(evs)
	}
	want := offset + total // installedCount counts the earlier runs' entries too
	waitFor(b, 120*time.Second, "d2 installs every connection", func() error {
		if n := dps["d2"].installedCount(); n < want {
			return fmt.Errorf("%d of %d installed", n, want)
		}
		return nil
	})
	if n := len(dps["d2"].missing(keys)); n > 0 {
		b.Fatalf("%d connections missing on d2", n)
	}
	at := dps["d2"].installedAt(keys)
	defer func() {
		// Close them all again, so that -count runs start from an empty table.
		for i := 0; i < len(keys); i += batch {
			evs := make([]dataplane.Event, 0, batch)
			for j := i; j < min(i+batch, len(keys)); j++ {
				evs = append(evs, dataplane.Event{Type: dataplane.EventClose, Conn: dataplane.Conn{Key: keys[j]}})
			}
			dps["d1"].inject(evs)
		}
		waitFor(b, 120*time.Second, "d2 drops every connection", func() error {
			if n := dps["d2"].count(); n > 0 {
				return fmt.Errorf("%d left", n)
			}
			return nil
		})
	}()
	lags := make([]time.Duration, len(at))
	last := start
	for i, t := range at {
		lags[i] = t.Sub(injected[i])
		if t.After(last) {
			last = t
		}
	}
	return len(keys), lags, float64(len(keys)) / last.Sub(start).Seconds()
}
