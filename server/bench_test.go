package server

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// BenchmarkReplicatedWrites measures CreateService through a 3-voter
// loopback cluster (TLS, fsync'd bolt log) with 32 concurrent clients (so Raft
// batches several entries per fsync) spread over all directors, so two thirds
// of the writes are forwarded to the leader.
func BenchmarkReplicatedWrites(b *testing.B) {
	c := newTestCluster(b, 3)
	c.startAll()
	c.waitLeader()
	clients := make([]raftlbv1.LoadBalancerServiceClient, len(c.nodes))
	for i, n := range c.nodes {
		clients[i], _ = c.admin(n)
	}

	var (
		seq     atomic.Uint64
		mu      sync.Mutex
		samples []time.Duration
	)
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var local []time.Duration
		for pb.Next() {
			i := seq.Add(1)
			lb := clients[i%uint64(len(clients))]
			svc := tcpService(fmt.Sprintf("198.51.100.%d", 1+(i/65000)%250), uint32(1+i%65000))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t0 := time.Now()
			_, err := lb.CreateService(ctx, &raftlbv1.CreateServiceRequest{Service: svc})
			cancel()
			if err != nil {
				b.Errorf("create %d: %v", i, err)
				return
			}
			local = append(local, time.Since(t0))
		}
		mu.Lock()
		samples = append(samples, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	pct := func(p float64) float64 {
		return float64(samples[int(p*float64(len(samples)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(samples))/elapsed.Seconds(), "writes/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
