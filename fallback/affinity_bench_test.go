package fallback_test

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/fallback"
)

func benchTable(b *testing.B, dir string, pins int) *fallback.Dataplane {
	logger, _ := logtest.NewNullLogger()
	dp, err := fallback.New(fallback.Options{StateDir: dir, Logger: logrus.NewEntry(logger)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Close() })
	ctx := context.Background()
	if err := dp.Sync(ctx, webState(30*time.Minute, 0)); err != nil {
		b.Fatal(err)
	}
	for i := range pins {
		c := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if err := dp.Pin(ctx, dataplane.Pin{Service: "web", Backend: "be1", Client: c, Key: "src=" + c.String()}); err != nil {
			b.Fatal(err)
		}
	}
	return dp
}

// BenchmarkLookup is the per-connection hot path, from every core at once,
// over a table of 100,000 pins.
func BenchmarkLookup(b *testing.B) {
	const pins = 100000
	dp := benchTable(b, "", pins)
	ctx := context.Background()
	var seed atomic.Uint32
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		for pb.Next() {
			i = (i + 1) % pins
			c := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			if _, ok, err := dp.Lookup(ctx, "web", c); !ok || err != nil {
				b.Fatal("miss", c, err)
			}
		}
	})
}

// BenchmarkSave writes a table of 1,000,000 pins to disk (one save per op).
func BenchmarkSave(b *testing.B) {
	dp := benchTable(b, b.TempDir(), 1000000)
	b.ResetTimer()
	for b.Loop() {
		if err := fallback.Save(dp); err != nil {
			b.Fatal(err)
		}
	}
}
