package balancer_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// BenchmarkAcceptToPinKernel measures, on a real kernel in a namespace lab,
// the time from accepting a new client's first connection to the netlink
// acknowledgement of its pin (first_connection: reset, classify: source).
// It reports the median and p99 in µs; the target is p99 < 1 ms.
func BenchmarkAcceptToPinKernel(b *testing.B) {
	nstest.RequireRoot(b)
	tp := nstest.NewTopology(b, 2)
	clients, _ := tp.AddClients(b, 199)
	clients = append(clients, nstest.Client4)

	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	sc := kernelService("bench", vip, 2, 65536)
	var mu sync.Mutex
	var samples []time.Duration
	_, dp := runKernelEngine(b, tp.LB, balancer.Options{
		Config:     &config.Config{Services: []config.Service{sc}},
		ObservePin: func(_ string, d time.Duration) { mu.Lock(); samples = append(samples, d); mu.Unlock() },
	})
	ctx := context.Background()

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := clients[i%len(clients)]
		if i > 0 && i%len(clients) == 0 {
			b.StopTimer()
			for _, cl := range clients {
				for _, be := range []string{"be1", "be2"} {
					dp.Unpin(ctx, "bench", be, cl)
				}
			}
			b.StartTimer()
		}
		conn, err := tp.Client.DialFrom(ctx, c, "tcp", vip.String())
		if errors.Is(err, syscall.ECONNRESET) {
			continue // the expected reset, arriving before connect returned
		}
		if err != nil {
			b.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, conn) // ends at the RST
		conn.Close()
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(samples) == 0 {
		b.Fatal("no pins observed")
	}
	slices.Sort(samples)
	q := func(p float64) float64 { return float64(samples[int(p*float64(len(samples)-1))].Microseconds()) }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(0, "ns/op")
}
