package fallback_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

func TestAffinityBatchFlushCount(t *testing.T) {
	tb := newTable(t, tableOptions{})
	tb.sync(webState(time.Hour, 3))
	ctx := context.Background()
	pin := func(client, backend string, ttl time.Duration) dataplane.Pin {
		return dataplane.Pin{Service: "web", Backend: backend, Client: netip.MustParseAddr(client), Key: "k", TTL: ttl}
	}
	err := tb.dp.PinBatch(ctx, []dataplane.Pin{
		pin("198.18.0.1", "be1", time.Minute),
		pin("198.18.0.2", "be1", 0),
		pin("198.18.0.3", "be2", 0),
		pin("198.18.0.4", "nope", 0), // unknown backend: reported, the others still pinned
	})
	if !errors.Is(err, dataplane.ErrUnknown) {
		t.Fatalf("PinBatch with an unknown backend: err = %v, want ErrUnknown", err)
	}
	tb.wantPins("be1", "198.18.0.1→be1 1m0s", "198.18.0.2→be1 1h0m0s")
	tb.wantPins("be2", "198.18.0.3→be2 1h0m0s")

	n, err := tb.dp.Count(ctx, "web")
	if err != nil || n["be1"] != 2 || n["be2"] != 1 {
		t.Fatalf("Count = %v, %v; want be1:2 be2:1", n, err)
	}
	if _, err := tb.dp.Count(ctx, "nope"); !errors.Is(err, dataplane.ErrUnknown) {
		t.Fatalf("Count of an unknown service: %v", err)
	}

	// A moved pin leaves its old backend's count.
	if err := tb.dp.PinBatch(ctx, []dataplane.Pin{pin("198.18.0.1", "be2", 0)}); err != nil {
		t.Fatal(err)
	}
	if n, _ := tb.dp.Count(ctx, "web"); n["be1"] != 1 || n["be2"] != 2 {
		t.Fatalf("Count after a move = %v", n)
	}

	if err := tb.dp.Flush(ctx, "web", "be2"); err != nil {
		t.Fatal(err)
	}
	tb.wantPins("be2")
	tb.wantPins("be1", "198.18.0.2→be1 1h0m0s")
	if n, _ := tb.dp.Count(ctx, "web"); n["be1"] != 1 || n["be2"] != 0 {
		t.Fatalf("Count after Flush = %v", n)
	}
	if err := tb.dp.Flush(ctx, "web", "nope"); !errors.Is(err, dataplane.ErrUnknown) {
		t.Fatalf("Flush of an unknown backend: %v", err)
	}
	// The freed room is usable: be2 takes 3 again.
	for _, c := range []string{"198.18.0.5", "198.18.0.6", "198.18.0.7"} {
		tb.mustPin(c, "be2", 0)
	}
}
