package balancer_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/kernel"
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
	sc := config.Service{
		Name: "bench", Listen: vip, FirstConnection: config.FirstReset, ClientTTL: time.Hour,
		MaxClients: 65536, Classify: config.ClassifySource, OnUnclassified: "default", OnBackendDown: "rehash",
		Timeouts: config.Timeouts{Connect: time.Second}, MaxConnections: 10000, ProxyProtocol: "off",
		Health: config.Health{Check: config.CheckNone},
		Pools: []config.Pool{{Name: "default", Balance: config.BalanceMaglev, Backends: []config.Backend{
			{Name: "be1", Address: netip.AddrPortFrom(nstest.Backend4(0), 80), Weight: 1},
			{Name: "be2", Address: netip.AddrPortFrom(nstest.Backend4(1), 80), Weight: 1}}}},
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	ctx, cancel := context.WithCancel(context.Background())
	dp, err := kernel.New(ctx, kernel.Options{NetNS: tp.LB.Path, Logger: logrus.NewEntry(log)})
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var samples []time.Duration
	eng, err := balancer.New(balancer.Options{
		Config: &config.Config{Services: []config.Service{sc}}, Dataplane: dp, Kernel: true,
		Logger: logrus.NewEntry(log),
		Listen: func(ctx context.Context, network, addr string) (ln net.Listener, err error) {
			err = tp.LB.Do(func() error { ln, err = net.Listen(network, addr); return err })
			return ln, err
		},
		ObservePin: func(_ string, d time.Duration) { mu.Lock(); samples = append(samples, d); mu.Unlock() },
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		kernel.Cleanup(context.Background(), kernel.Options{NetNS: tp.LB.Path})
		dp.Close()
	})
	for eng.Addr("bench") == nil {
		time.Sleep(5 * time.Millisecond)
	}

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
