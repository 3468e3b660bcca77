package kernel

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
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
	_, d, _ := nsLab(b, "kb-", Options{})
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

// BenchmarkPinBatch measures PinBatch through netlink into a real set:
// each iteration is one pin, made in batches of pinChunk (re-pins after
// the first 131072).
func BenchmarkPinBatch(b *testing.B) {
	d := benchDataplane(b)
	ctx := context.Background()
	batch := make([]dataplane.Pin, pinChunk)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(batch) {
		batch = batch[:min(pinChunk, b.N-i)]
		for j := range batch {
			batch[j] = dataplane.Pin{Service: "web", Backend: "be1", Client: benchClient(i + j), Key: "src=client", TTL: time.Duration(60+j) * time.Second}
		}
		if err := d.PinBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pins/s")
}

// BenchmarkMove100k compares ways to put the 100,000 listed pins of a dead
// backend into three other backends' sets (the step of a re-pin between
// listing and flushing): PinBatch over netlink, `ipset restore -exist`
// into the sets, and `ipset restore` into temporary sets swapped in.
func BenchmarkMove100k(b *testing.B) {
	const n = 100000
	moved := make([]dataplane.Pin, n)
	for i := range moved {
		c := benchClient(i)
		moved[i] = dataplane.Pin{Service: "web", Backend: fmt.Sprintf("be%d", 1+i%3), Client: c, Key: "src=" + c.String(), TTL: time.Duration(600+i%3000) * time.Second}
	}
	// restoreText renders the adds for ipset restore, into the backends'
	// sets or, with tmp, into temporary sets swapped in at the end.
	restoreText := func(tmp bool) []byte {
		var buf bytes.Buffer
		set := func(be string) string {
			if tmp {
				return "ho-web-_m" + be
			}
			return "ho-web-" + be
		}
		if tmp {
			for _, be := range []string{"be1", "be2", "be3"} {
				fmt.Fprintf(&buf, "create %s hash:ip family inet hashsize 1024 maxelem %d timeout 3600 comment\n", set(be), benchClients)
			}
		}
		for _, p := range moved {
			fmt.Fprintf(&buf, "add %s %s timeout %d comment \"%s\"\n", set(p.Backend), p.Client, seconds(p.TTL), p.Key)
		}
		if tmp {
			for _, be := range []string{"be1", "be2", "be3"} {
				fmt.Fprintf(&buf, "swap %s %s\ndestroy %s\n", set(be), "ho-web-"+be, set(be))
			}
		}
		return buf.Bytes()
	}
	for _, c := range []struct {
		name string
		move func(b *testing.B, d *Dataplane)
	}{
		{"PinBatch", func(b *testing.B, d *Dataplane) {
			if err := d.PinBatch(context.Background(), moved); err != nil {
				b.Fatal(err)
			}
		}},
		{"IpsetRestore", func(b *testing.B, d *Dataplane) {
			if _, stderr, err := runIn(context.Background(), d.ns, restoreText(false), "ipset", "restore", "-exist"); err != nil {
				b.Fatalf("ipset restore: %v: %s", err, stderr)
			}
		}},
		{"IpsetRestoreSwap", func(b *testing.B, d *Dataplane) {
			if _, stderr, err := runIn(context.Background(), d.ns, restoreText(true), "ipset", "restore"); err != nil {
				b.Fatalf("ipset restore: %v: %s", err, stderr)
			}
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			nstest.RequireRoot(b)
			ns := nstest.New(b, "kb-")
			d, _ := newNSDataplane(b, ns, Options{})
			mustSync(b, d, labState(4, time.Hour, benchClients))
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				c.move(b, d)
				b.StopTimer()
				counts, err := d.Count(ctx, "web")
				if err != nil || counts["be1"]+counts["be2"]+counts["be3"] != n {
					b.Fatalf("Count = %v, %v; want %d pins", counts, err, n)
				}
				for _, be := range []string{"be1", "be2", "be3"} {
					if err := d.Flush(ctx, "web", be); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "pins/s")
		})
	}
}

// reloadStates returns two states of 100 IPv4 services × 10 backends
// (1,000 sets) that differ in 10 backends: b replaces the first backend
// of services s00..s09 with another. ClientTTL and MaxClients are the
// same in both.
func reloadStates() (a, b dataplane.State) {
	for i := range 100 {
		s := dataplane.Service{
			Name:       fmt.Sprintf("s%02d", i),
			Listen:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 80),
			ClientTTL:  30 * time.Minute,
			MaxClients: 65536,
		}
		for j := range 10 {
			s.Backends = append(s.Backends, dataplane.Backend{Name: fmt.Sprintf("b%d", j), Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i), byte(j)}), 8080)})
		}
		a.Services = append(a.Services, s)
		if i < 10 {
			s.Backends = append([]dataplane.Backend{{Name: "b10", Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i), 10}), 8080)}}, s.Backends[1:]...)
		}
		b.Services = append(b.Services, s)
	}
	return a, b
}

// unionState is what the balancer syncs first on a reload from a to b:
// b's services with the backends of both.
func unionState(a, b dataplane.State) dataplane.State {
	var u dataplane.State
	for i, s := range b.Services {
		s.Backends = slices.Clone(s.Backends)
		for _, be := range a.Services[i].Backends {
			if !slices.ContainsFunc(s.Backends, func(x dataplane.Backend) bool { return x.Name == be.Name }) {
				s.Backends = append(s.Backends, be)
			}
		}
		u.Services = append(u.Services, s)
	}
	return u
}

// BenchmarkSyncReload1000 measures the two Syncs of a reload of 100
// services × 10 backends in which 10 backends are added and 10 removed:
// the union of old and new, then the new state. Iterations alternate
// between the two states.
func BenchmarkSyncReload1000(b *testing.B) {
	_, d, _ := nsLab(b, "kb-", Options{})
	x, y := reloadStates()
	mustSync(b, d, x)
	ctx := context.Background()
	var union, final time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		from, to := x, y
		if i%2 == 1 {
			from, to = y, x
		}
		start := time.Now()
		if err := d.Sync(ctx, unionState(from, to)); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := d.Sync(ctx, to); err != nil {
			b.Fatal(err)
		}
		union += mid.Sub(start)
		final += time.Since(mid)
	}
	b.ReportMetric(float64(union.Milliseconds())/float64(b.N), "union-ms/op")
	b.ReportMetric(float64(final.Milliseconds())/float64(b.N), "new-ms/op")
}
