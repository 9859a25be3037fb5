package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the director's Prometheus series, on a registry of its own so
// that several directors can run in one process (tests) without clashing.
type metrics struct {
	reg           *prometheus.Registry
	raftState     *prometheus.GaugeVec
	term          prometheus.Gauge
	applied       prometheus.Gauge
	commit        prometheus.Gauge
	generation    prometheus.Gauge
	leaderChanges prometheus.Counter
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	forwards      *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		raftState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "raftlb_raft_state", Help: "1 for the Raft state this director is in, 0 for the others.",
		}, []string{"state"}),
		term: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "raftlb_raft_term", Help: "Current Raft term.",
		}),
		applied: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "raftlb_raft_applied_index", Help: "Last Raft index applied to the state machine.",
		}),
		commit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "raftlb_raft_commit_index", Help: "Last Raft index known to be committed.",
		}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "raftlb_fsm_generation", Help: "Generation of the replicated state.",
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "raftlb_raft_leader_changes_total", Help: "Leader changes observed by this director.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "raftlb_api_requests_total", Help: "API requests by method and status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "raftlb_api_request_duration_seconds", Help: "API request latency by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"method"}),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "raftlb_forwarded_requests_total", Help: "Requests forwarded to the leader, by outcome.",
		}, []string{"outcome"}),
	}
	m.reg.MustRegister(m.raftState, m.term, m.applied, m.commit, m.generation, m.leaderChanges,
		m.requests, m.latency, m.forwards,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeRaft samples the Raft node; called periodically by the metrics loop.
func (m *metrics) observeRaft(r *raft.Raft) {
	st := r.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == st {
			v = 1
		}
		m.raftState.WithLabelValues(s.String()).Set(v)
	}
	m.term.Set(float64(r.CurrentTerm()))
	m.applied.Set(float64(r.AppliedIndex()))
	m.commit.Set(float64(r.CommitIndex()))
}

// serveMetrics serves /metrics on l until ctx is cancelled.
func serveMetrics(ctx context.Context, l net.Listener, reg *prometheus.Registry, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("shut down metrics server", "err", err)
		}
	}()
	err := srv.Serve(l)
	<-done
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}
