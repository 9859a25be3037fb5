package server

import (
	"net/netip"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/raftlb/raftlb/dataplane"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/health"
)

// addStats fills in the counters of the services and their realservers
// from this director's dataplane; without one, or when it cannot be read,
// they stay empty (reads never fail for want of counters).
func (d *Director) addStats(svcs ...*raftlbv1.VirtualService) {
	pp := d.packetPath()
	if pp == nil {
		return
	}
	st, err := pp.dp.Stats()
	if err != nil {
		d.log.Warn("read dataplane counters", "err", err)
		return
	}
	for _, vs := range svcs {
		sk, err := serviceKeyToDataplane(vs.GetKey())
		if err != nil {
			continue
		}
		c := st.Services[sk]
		var active int64
		for _, rs := range vs.GetRealservers() {
			a, err := netip.ParseAddr(rs.GetAddress())
			if err != nil {
				continue
			}
			rk := dataplane.RealKey{Service: sk, Real: netip.AddrPortFrom(a, uint16(rs.GetPort()))}
			rc := st.Realservers[rk]
			act := st.Active[rk]
			active += act
			rs.Stats = &raftlbv1.Stats{Packets: rc.Packets, Bytes: rc.Bytes, Connections: rc.Conns, ActiveConnections: uint64(act)}
		}
		vs.Stats = &raftlbv1.Stats{Packets: c.Packets, Bytes: c.Bytes, Connections: c.Conns, ActiveConnections: uint64(active)}
	}
}

// dataplaneCollector exports the dataplane's counters on every scrape.
type dataplaneCollector struct {
	pp *PacketPath

	svcPackets, svcBytes, svcConns                                              *prometheus.Desc
	rsPackets, rsBytes, rsConns, rsActive                                       *prometheus.Desc
	reasons, connTable, connCapacity, sysctlRepairs, skipped, reconcileErrs, up *prometheus.Desc
}

func newDataplaneCollector(pp *PacketPath) *dataplaneCollector {
	svc := []string{"vip", "port", "proto"}
	rs := []string{"vip", "port", "proto", "realserver", "rport"}
	return &dataplaneCollector{
		pp:            pp,
		svcPackets:    prometheus.NewDesc("raftlb_service_packets_total", "Packets forwarded for the service by this director.", svc, nil),
		svcBytes:      prometheus.NewDesc("raftlb_service_bytes_total", "Bytes forwarded for the service by this director.", svc, nil),
		svcConns:      prometheus.NewDesc("raftlb_service_connections_total", "Connections this director scheduled for the service.", svc, nil),
		rsPackets:     prometheus.NewDesc("raftlb_realserver_packets_total", "Packets forwarded to the realserver by this director.", rs, nil),
		rsBytes:       prometheus.NewDesc("raftlb_realserver_bytes_total", "Bytes forwarded to the realserver by this director.", rs, nil),
		rsConns:       prometheus.NewDesc("raftlb_realserver_connections_total", "Connections this director scheduled to the realserver.", rs, nil),
		rsActive:      prometheus.NewDesc("raftlb_realserver_active_connections", "Connections to the realserver in this director's table.", rs, nil),
		reasons:       prometheus.NewDesc("raftlb_dataplane_verdicts_total", "Packets by what the dataplane did with them and why (drop_*, xdp_pass_*, xdp_tx_*, tc_*; conn_table_full and event_lost count lost table entries and ring-buffer events).", []string{"reason"}, nil),
		connTable:     prometheus.NewDesc("raftlb_dataplane_connections", "Entries in this director's connection table at the last sweep.", nil, nil),
		connCapacity:  prometheus.NewDesc("raftlb_dataplane_connection_capacity", "Connections this director's table is sized for (--conn-table-size); conn_table_full counts the ones that did not fit.", nil, nil),
		sysctlRepairs: prometheus.NewDesc("raftlb_dataplane_sysctl_repairs_total", "Times the director found forwarding or send_redirects turned back on and turned it off again.", nil, nil),
		skipped:       prometheus.NewDesc("raftlb_dataplane_skipped_entries_total", "Entries of the replicated state the dataplane refused and left out.", nil, nil),
		reconcileErrs: prometheus.NewDesc("raftlb_dataplane_reconcile_errors_total", "Reconciliations of the dataplane that failed.", nil, nil),
		up:            prometheus.NewDesc("raftlb_dataplane_up", "1 if the dataplane's counters could be read at this scrape.", nil, nil),
	}
}

func (c *dataplaneCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.svcPackets, c.svcBytes, c.svcConns, c.rsPackets, c.rsBytes, c.rsConns,
		c.rsActive, c.reasons, c.connTable, c.connCapacity, c.sysctlRepairs, c.skipped, c.reconcileErrs, c.up} {
		ch <- d
	}
}

func (c *dataplaneCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.skipped, prometheus.CounterValue, float64(c.pp.skipped.Load()))
	ch <- prometheus.MustNewConstMetric(c.reconcileErrs, prometheus.CounterValue, float64(c.pp.reconcileErrors.Load()))
	st, err := c.pp.dp.Stats()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	for k, v := range st.Services {
		l := svcLabels(k)
		ch <- prometheus.MustNewConstMetric(c.svcPackets, prometheus.CounterValue, float64(v.Packets), l...)
		ch <- prometheus.MustNewConstMetric(c.svcBytes, prometheus.CounterValue, float64(v.Bytes), l...)
		ch <- prometheus.MustNewConstMetric(c.svcConns, prometheus.CounterValue, float64(v.Conns), l...)
	}
	for k, v := range st.Realservers {
		l := append(svcLabels(k.Service), k.Real.Addr().String(), strconv.Itoa(int(k.Real.Port())))
		ch <- prometheus.MustNewConstMetric(c.rsPackets, prometheus.CounterValue, float64(v.Packets), l...)
		ch <- prometheus.MustNewConstMetric(c.rsBytes, prometheus.CounterValue, float64(v.Bytes), l...)
		ch <- prometheus.MustNewConstMetric(c.rsConns, prometheus.CounterValue, float64(v.Conns), l...)
		ch <- prometheus.MustNewConstMetric(c.rsActive, prometheus.GaugeValue, float64(st.Active[k]), l...)
	}
	for r, n := range st.Reasons {
		ch <- prometheus.MustNewConstMetric(c.reasons, prometheus.CounterValue, float64(n), r.String())
	}
	ch <- prometheus.MustNewConstMetric(c.connTable, prometheus.GaugeValue, float64(st.Conns))
	ch <- prometheus.MustNewConstMetric(c.connCapacity, prometheus.GaugeValue, float64(st.ConnCapacity))
	ch <- prometheus.MustNewConstMetric(c.sysctlRepairs, prometheus.CounterValue, float64(st.SysctlRepairs))
}

func svcLabels(k dataplane.ServiceKey) []string {
	return []string{k.VIP.String(), strconv.Itoa(int(k.Port)), k.Proto.String()}
}

// healthCollector exports the replicated verdicts and this director's own
// probe results on every scrape.
type healthCollector struct {
	d          *Director
	replicated *prometheus.Desc
	local      *prometheus.Desc
}

func newHealthCollector(d *Director) *healthCollector {
	rs := []string{"vip", "port", "proto", "realserver", "rport", "state"}
	return &healthCollector{
		d:          d,
		replicated: prometheus.NewDesc("raftlb_realserver_health", "1 for the replicated health verdict of the realserver (unknown, up, down), 0 for the others.", rs, nil),
		local:      prometheus.NewDesc("raftlb_realserver_probe_state", "1 for the state this director's own probes give the realserver, 0 for the others.", rs, nil),
	}
}

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.replicated
	ch <- c.local
}

var healthStates = []health.State{health.StateUnknown, health.StateUp, health.StateDown}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	for _, vs := range c.d.fsm.Services() {
		for _, rs := range vs.GetRealservers() {
			t, err := health.TargetFromProto(vs.GetKey(), rs)
			if err != nil {
				continue
			}
			got := health.StateFromProto(rs.GetHealth())
			for _, s := range healthStates {
				v := 0.0
				if s == got {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(c.replicated, prometheus.GaugeValue, v, targetLabels(t, s)...)
			}
		}
	}
	checker := c.d.checker.Load()
	if checker == nil {
		return
	}
	for t, got := range checker.States() {
		for _, s := range healthStates {
			v := 0.0
			if s == got {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.local, prometheus.GaugeValue, v, targetLabels(t, s)...)
		}
	}
}

func targetLabels(t health.Target, s health.State) []string {
	port := t.Port
	if port == 0 {
		port = t.Service.Port
	}
	return []string{t.Service.VIP.String(), strconv.Itoa(int(t.Service.Port)), t.Service.Protocol.String(),
		t.Address.String(), strconv.Itoa(int(port)), s.String()}
}
