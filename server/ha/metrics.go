package ha

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the HA components' counters. A nil *Metrics is valid and
// records nothing, so tests and witnesses may pass nil.
type Metrics struct {
	LeaseGrants      prometheus.Counter
	LeaseRefusals    prometheus.Counter
	LeaseReleases    prometheus.Counter
	LeaseLapses      prometheus.Counter
	Takeovers        prometheus.Counter
	TakeoverSeconds  prometheus.Histogram
	GARPsSent        prometheus.Counter
	GARPErrors       prometheus.Counter
	Reassignments    prometheus.Counter
	FailoverSeconds  prometheus.Histogram
	ConnEvents       prometheus.Counter
	ConnDropped      prometheus.Counter
	ConnBatches      prometheus.Counter
	ConnBatchEntries prometheus.Histogram
	ConnLagSeconds   prometheus.Histogram
	ConnQueueDepth   prometheus.Gauge
	ConnResyncs      prometheus.Counter
}

// NewMetrics creates the collectors and registers them on reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "raftlb", Subsystem: "ha", Name: name, Help: help})
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "raftlb", Subsystem: "ha", Name: name, Help: help, Buckets: buckets})
	}
	secs := []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 16}
	m := &Metrics{
		LeaseGrants:      counter("lease_grants_total", "Address leases granted by this leader."),
		LeaseRefusals:    counter("lease_refusals_total", "Address lease claims this leader refused."),
		LeaseReleases:    counter("lease_releases_total", "Address leases released by their owners (handover)."),
		LeaseLapses:      counter("lease_lapses_total", "Leases held by this director that ran out before renewal."),
		Takeovers:        counter("takeovers_total", "Addresses this director took over (first lease of a new epoch)."),
		TakeoverSeconds:  hist("takeover_seconds", "From seeing an address assigned to this director to its first gratuitous ARP.", secs),
		GARPsSent:        counter("garps_sent_total", "Gratuitous ARP announcements sent."),
		GARPErrors:       counter("garp_errors_total", "Gratuitous ARP announcements that failed."),
		Reassignments:    counter("reassignments_total", "Addresses this leader reassigned."),
		FailoverSeconds:  hist("failover_seconds", "From the last lease granted to a lost or released owner to the commit of the new assignment.", secs),
		ConnEvents:       counter("connsync_events_total", "Connection events accepted for replication."),
		ConnDropped:      counter("connsync_dropped_total", "Connection events dropped because the queue was full."),
		ConnBatches:      counter("connsync_batches_total", "Connection batches committed."),
		ConnBatchEntries: hist("connsync_batch_entries", "Entries per committed connection batch.", prometheus.ExponentialBuckets(1, 4, 8)),
		ConnLagSeconds:   hist("connsync_lag_seconds", "From the oldest event of a batch to its commit.", secs),
		ConnQueueDepth: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "raftlb", Subsystem: "ha",
			Name: "connsync_queue_depth", Help: "Connection events waiting to be batched."}),
		ConnResyncs: counter("connsync_resyncs_total", "Full re-announcements of the live connection table."),
	}
	if reg != nil {
		reg.MustRegister(m.LeaseGrants, m.LeaseRefusals, m.LeaseReleases, m.LeaseLapses, m.Takeovers,
			m.TakeoverSeconds, m.GARPsSent, m.GARPErrors, m.Reassignments, m.FailoverSeconds,
			m.ConnEvents, m.ConnDropped, m.ConnBatches, m.ConnBatchEntries, m.ConnLagSeconds,
			m.ConnQueueDepth, m.ConnResyncs)
	}
	return m
}

func (m *Metrics) inc(c func(*Metrics) prometheus.Counter, n int) {
	if m != nil && n > 0 {
		c(m).Add(float64(n))
	}
}

func (m *Metrics) observe(h func(*Metrics) prometheus.Histogram, d time.Duration) {
	if m != nil {
		h(m).Observe(d.Seconds())
	}
}
