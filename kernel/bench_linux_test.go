package kernel

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// benchClients is how many distinct client addresses the benchmarks use:
// 198.18.0.0/15 holds 131072.
const benchClients = 1 << 17

func benchClient(i int) netip.Addr {
	i %= benchClients
	return netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
}

func benchDataplane(b *testing.B) *Dataplane {
	nstest.RequireRoot(b)
	ns := nstest.New(b, "kb-")
	d, _ := newNSDataplane(b, ns, Options{})
	st := labState(2, time.Hour, benchClients)
	mustSync(b, d, st)
	return d
}

// BenchmarkPin measures Pin through netlink into a real set: each
// iteration is one acknowledged ipset add (or replace, after the first
// 131072).
func BenchmarkPin(b *testing.B) {
	d := benchDataplane(b)
	ctx := context.Background()
	p := dataplane.Pin{Service: "web", Backend: "be1", Key: "src=client"}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		p.Client = benchClient(i)
		if err := d.Pin(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pins/s")
}

// BenchmarkPinParallel is BenchmarkPin from GOMAXPROCS goroutines sharing
// the Dataplane (and its one netlink socket).
func BenchmarkPinParallel(b *testing.B) {
	d := benchDataplane(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var n int64
	b.RunParallel(func(pb *testing.PB) {
		p := dataplane.Pin{Service: "web", Backend: "be1", Key: "src=client"}
		i := int(time.Now().UnixNano())
		for pb.Next() {
			i++
			p.Client = benchClient(i)
			if err := d.Pin(ctx, p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	n = int64(b.N)
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "pins/s")
}

// BenchmarkPins100k lists a set of 100,000 pins.
func BenchmarkPins100k(b *testing.B) {
	d := benchDataplane(b)
	ctx := context.Background()
	const n = 100000
	for i := range n {
		mustPin(b, d, dataplane.Pin{Service: "web", Backend: "be0", Client: benchClient(i), Key: "src=198.18.0.0"})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		got := 0
		if err := d.Pins(ctx, "web", "be0", func(dataplane.Pin) error { got++; return nil }); err != nil {
			b.Fatal(err)
		}
		if got != n {
			b.Fatalf("listed %d pins, want %d", got, n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/entry")
}
